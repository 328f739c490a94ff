"""The segment service: decode, plan, infer and encode one image, outside any HTTP request.

Routes (`/v1`, `/v2`), the benchmarks and long-running jobs call `segment_file` (an encoded
image in, an encoded answer out) or `infer_pixels` (decoded pixels in, class maps out).
Every path obeys one memory budget (`Limits`, from the settings).
"""

from app.service.budget import Limits
from app.service.segmenting import (
    OutputFormat,
    SegmentOptions,
    SegmentResult,
    infer_pixels,
    segment_file,
)

__all__ = [
    "Limits",
    "OutputFormat",
    "SegmentOptions",
    "SegmentResult",
    "infer_pixels",
    "segment_file",
]

"""format=coco and format=geojson, each read back by its own ecosystem's library:
pycocotools decodes the COCO RLE, rasterio rasterises the GeoJSON (GDAL's pixel-centre
rule) and shapely checks the polygons are valid; the GeoTIFF is written by GDAL."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.config import Settings
from app.imaging.georef import read_georeference
from app.imaging.masks.coco import coco_entries, coco_size_bound
from app.imaging.masks.geojson import corner_visits, feature_collection, geojson_size_bound
from app.imaging.masks.polygons import polygons, trace
from app.imaging.masks.simplify import simplify_rings
from app.main import create_app
from tests.app.conftest import png_bytes, wait_ready
from tests.app.tiny_models import write_model

mask_api = pytest.importorskip("pycocotools.mask")
features = pytest.importorskip("rasterio.features")
rasterio = pytest.importorskip("rasterio")
geometry = pytest.importorskip("shapely.geometry")
from rasterio.transform import Affine, from_origin  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data"
ISBI_MAP = DATA / "unet-isbi--isbi2012-21.png"
CAMVID_MAP = DATA / "dilated-camvid--camvid-0016E5_08041.png"


def reference_map(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def rng_maps() -> Iterator[np.ndarray]:
    rng = np.random.default_rng(7)
    yield (rng.random((37, 53)) < 0.5).astype(np.uint8)  # pixel noise: pinches everywhere
    yield rng.integers(0, 4, (9, 11)).astype(np.uint8)
    yield np.zeros((1, 17), np.uint8)  # one class, a 1-row strip
    eye = np.eye(6, dtype=np.uint8)  # a diagonal chain touching only at corners
    yield eye
    ring = np.ones((7, 7), np.uint8)
    ring[2:5, 2:5] = 0
    ring[3, 3] = 2  # an island in a hole
    yield ring


def all_maps() -> list[np.ndarray]:
    return [reference_map(ISBI_MAP), reference_map(CAMVID_MAP), *rng_maps()]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    directory = tmp_path_factory.mktemp("masks")
    write_model(directory, "threshold", "tiny-grey", size_multiple=8)
    write_model(directory, "brightest", "tiny-rgb")
    settings = Settings(model_dir=directory, intra_op_threads=1, max_pixels=4_000_000)
    with TestClient(create_app(settings)) as test_client:
        wait_ready(test_client)
        yield test_client


def segment(client: TestClient, model: str, image: bytes, **params: object) -> bytes:
    response = client.post(
        f"/v1/models/{model}/segment", params=params, files={"image": ("x", image)}
    )
    assert response.status_code == 200, response.text
    return response.content


def png_map(client: TestClient, model: str, image: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(segment(client, model, image, format="png"))))


def isbi_like_image() -> bytes:
    """A grey image tiny-grey segments into the ISBI reference map (cells with holes)."""
    return png_bytes(np.where(reference_map(ISBI_MAP) == 0, 255, 0).astype(np.uint8))


def colour_image(seed: int = 3) -> bytes:
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (12, 16, 3)).astype(np.uint8)
    return png_bytes(np.kron(blocks, np.ones((5, 5, 1), np.uint8)))


def rasterise(geom: dict[str, object], shape: tuple[int, int], transform: Affine) -> np.ndarray:
    burned = features.rasterize([(geom, 1)], out_shape=shape, transform=transform, fill=0)
    return np.asarray(burned, bool)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return np.count_nonzero(a & b) / union if union else 1.0


# ---- COCO ------------------------------------------------------------------------------


@pytest.mark.parametrize("labels", all_maps(), ids=lambda m: f"{m.shape}")
def test_coco_rle_is_pycocotools_own_encoding(labels: np.ndarray) -> None:
    entries = coco_entries(labels, [f"c{i}" for i in range(int(labels.max()) + 1)])
    assert [e["category_id"] for e in entries] == np.unique(labels).tolist()
    for entry in entries:
        mask = labels == entry["category_id"]
        expected = mask_api.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert entry["segmentation"]["counts"] == expected["counts"].decode()
        assert entry["segmentation"]["size"] == list(mask.shape)
        assert np.array_equal(mask_api.decode(entry["segmentation"]).astype(bool), mask)
        assert entry["area"] == int(mask_api.area(expected))
        assert entry["bbox"] == mask_api.toBbox(expected).tolist()


def test_coco_over_http_decodes_to_the_png_class_map(client: TestClient) -> None:
    from pycocotools.coco import COCO

    for model, image in (("tiny-rgb", colour_image()), ("tiny-grey", isbi_like_image())):
        expected = png_map(client, model, image)
        document = json.loads(segment(client, model, image, format="coco"))
        assert document["images"] == [
            {"id": 1, "width": expected.shape[1], "height": expected.shape[0]}
        ]
        coco = COCO()
        coco.dataset = document
        coco.createIndex()
        rebuilt = np.full(expected.shape, 255, np.uint8)
        for annotation in coco.loadAnns(coco.getAnnIds(imgIds=[1])):
            mask = coco.annToMask(annotation).astype(bool)
            assert not (rebuilt[mask] != 255).any()  # the classes never overlap
            rebuilt[mask] = annotation["category_id"]
            name = coco.loadCats([annotation["category_id"]])[0]["name"]
            assert annotation["category_name"] == name
        assert np.array_equal(rebuilt, expected)


# ---- GeoJSON -----------------------------------------------------------------------------


@pytest.mark.parametrize("labels", all_maps(), ids=lambda m: f"{m.shape}")
def test_exact_polygons_rasterise_back_to_each_class(labels: np.ndarray) -> None:
    classes = [f"c{i}" for i in range(int(labels.max()) + 1)]
    collection = json.loads(feature_collection(labels, classes, 0.0, None, {}))
    assert collection["type"] == "FeatureCollection"
    assert [f["id"] for f in collection["features"]] == np.unique(labels).tolist()
    for feature in collection["features"]:
        shape = geometry.shape(feature["geometry"])
        assert shape.is_valid, feature["properties"]
        mask = labels == feature["id"]
        assert shape.area == np.count_nonzero(mask)
        assert np.array_equal(rasterise(feature["geometry"], labels.shape, Affine.identity()), mask)
        for polygon in feature["geometry"]["coordinates"]:
            for n, ring in enumerate(polygon):
                assert ring[0] == ring[-1]
                # RFC 7946's right-hand rule, numerically: outer rings positive.
                assert (geometry.Polygon(ring).exterior.is_ccw) == (n == 0)


def test_rings_and_holes_of_the_isbi_map() -> None:
    labels = reference_map(ISBI_MAP)
    rings = trace(labels == 1)
    assert int(rings.areas.sum()) == np.count_nonzero(labels == 1)
    cells = polygons(labels == 1)
    membrane = polygons(labels == 0)
    # About a hundred cells (slice 21's labels hold 98, unet-isbi 1.3.0 draws 97), and the
    # membrane is one region whose holes are the cells.
    assert len(cells) > 80
    assert max(len(p) for p in membrane) > 50


def recursive_douglas_peucker(ring: np.ndarray, tolerance: float) -> np.ndarray:
    """The textbook recursion (a stack here) on a closed ring split at its first point and
    the point farthest from it: the reference for the vectorised version."""
    if tolerance <= 0 or ring.shape[0] <= 3:
        return ring
    points = ring.astype(np.float64)
    far = int(np.argmax(((points - points[0]) ** 2).sum(axis=1)))
    closed = np.concatenate((points, points[:1]))
    keep = np.zeros(closed.shape[0], bool)
    keep[[0, far, -1]] = True
    stack = [(0, far), (far, closed.shape[0] - 1)]
    while stack:
        first, last = stack.pop()
        if last - first < 2:
            continue
        a, b = closed[first], closed[last]
        segment = closed[first + 1 : last]
        ab = b - a
        length = float(np.hypot(*ab))
        if length == 0:
            distances = np.hypot(*(segment - a).T)
        else:
            distances = np.abs(ab[0] * (segment[:, 1] - a[1]) - ab[1] * (segment[:, 0] - a[0]))
            distances /= length
        worst = int(np.argmax(distances))
        if distances[worst] > tolerance:
            middle = first + 1 + worst
            keep[middle] = True
            stack += [(first, middle), (middle, last)]
    result = ring[keep[:-1]]
    return result if result.shape[0] >= 3 else ring[:0]


@pytest.mark.parametrize("tolerance", [0.5, 1.0, 2.5])
def test_vectorised_simplification_keeps_the_recursive_points(tolerance: float) -> None:
    rings = []
    for labels in all_maps():
        traced = trace(labels == labels.flat[0])
        rings += [traced.ring(k) for k in range(traced.areas.size)]
    simplified = simplify_rings(rings, tolerance)
    for ring, fast in zip(rings, simplified, strict=True):
        assert np.array_equal(fast, recursive_douglas_peucker(ring, tolerance))


def test_simplified_polygons_keep_iou_and_shrink() -> None:
    labels = reference_map(ISBI_MAP)
    exact = feature_collection(labels, ["membrane", "cell"], 0.0, None, {})
    simple = feature_collection(labels, ["membrane", "cell"], 1.0, None, {})
    assert len(simple) < len(exact) / 2
    for feature in json.loads(simple)["features"]:
        back = rasterise(feature["geometry"], labels.shape, Affine.identity())
        assert iou(back, labels == feature["id"]) >= 0.9


def test_geojson_of_a_512_isbi_map_is_fast() -> None:
    labels = reference_map(ISBI_MAP)
    started = time.perf_counter()
    feature_collection(labels, ["membrane", "cell"], 0.0, None, {})
    assert time.perf_counter() - started < 3.0  # about 0.15 s on one shared core


def test_geojson_over_http_matches_the_png_class_map(client: TestClient) -> None:
    for model, image in (("tiny-rgb", colour_image()), ("tiny-grey", isbi_like_image())):
        expected = png_map(client, model, image)
        response = client.post(
            f"/v1/models/{model}/segment",
            params={"format": "geojson"},
            files={"image": ("x", image)},
        )
        assert response.headers["content-type"] == "application/geo+json"
        collection = response.json()
        assert collection["coordinate_space"] == "pixel" and "crs" not in collection
        assert {f["id"] for f in collection["features"]} == set(np.unique(expected).tolist())
        for feature in collection["features"]:
            back = rasterise(feature["geometry"], expected.shape, Affine.identity())
            assert iou(back, expected == feature["id"]) == 1.0
            assert feature["properties"]["pixels"] == np.count_nonzero(expected == feature["id"])
        simplified = json.loads(segment(client, model, image, format="geojson", simplify=2))
        for feature in simplified["features"]:
            back = rasterise(feature["geometry"], expected.shape, Affine.identity())
            assert iou(back, expected == feature["id"]) >= 0.8


def test_accept_geo_json_chooses_geojson(client: TestClient) -> None:
    response = client.post(
        "/v1/models/tiny-rgb/segment",
        headers={"Accept": "application/geo+json"},
        files={"image": ("x", colour_image())},
    )
    assert response.headers["content-type"] == "application/geo+json"


def write_geotiff(path: Path, pixels: np.ndarray, crs: str | None, transform: Affine) -> bytes:
    with rasterio.open(
        path, "w", driver="GTiff", width=pixels.shape[1], height=pixels.shape[0], count=1,
        dtype="uint8", crs=crs, transform=transform,
    ) as dataset:  # fmt: skip
        dataset.write(pixels, 1)
    return path.read_bytes()


GEO_CASES = [
    ("EPSG:32633", from_origin(500_000.0, 4_600_000.0, 10.0, 10.0)),
    ("EPSG:3857", Affine(2.0, 0.5, 100.0, 0.25, -3.0, 900.0)),  # rotated: ModelTransformation
    (None, from_origin(1000.0, 2000.0, 0.5, 0.5)),
]


@pytest.mark.parametrize(("crs", "transform"), GEO_CASES, ids=["utm", "rotated", "no-crs"])
def test_geotiff_polygons_are_in_map_coordinates(
    client: TestClient, tmp_path: Path, crs: str | None, transform: Affine
) -> None:
    pixels = np.where(reference_map(ISBI_MAP)[:96, :128] == 0, 255, 0).astype(np.uint8)
    tiff = write_geotiff(tmp_path / "in.tif", pixels, crs, transform)
    georef = read_georeference(tiff)
    assert georef is not None
    assert (georef.a, georef.b, georef.c, georef.d, georef.e, georef.f) == tuple(transform)[:6]
    expected = png_map(client, "tiny-grey", tiff)
    collection = json.loads(segment(client, "tiny-grey", tiff, format="geojson"))
    assert collection["coordinate_space"] == "map"
    assert collection["georeference"]["transform"] == list(tuple(transform)[:6])
    if crs is None:
        assert "crs" not in collection
        assert "no EPSG code" in collection["features"][0]["properties"]["crs_note"]
    else:
        assert collection["crs"]["properties"]["name"].endswith(crs.split(":")[1])
        assert collection["features"][0]["properties"]["crs"] == crs
    for feature in collection["features"]:
        shape = geometry.shape(feature["geometry"])
        assert shape.is_valid
        back = rasterise(feature["geometry"], expected.shape, transform)
        assert iou(back, expected == feature["id"]) >= 0.999  # float rounding at most


def tagged_tiff(tags: dict[int, tuple[int, tuple[float, ...] | int]]) -> bytes:
    """A TIFF with GeoTIFF tags written by Pillow (type 12 DOUBLE, 3 SHORT)."""
    from PIL import TiffImagePlugin

    directory = TiffImagePlugin.ImageFileDirectory_v2()
    for tag, (kind, value) in tags.items():
        directory[tag] = value
        directory.tagtype[tag] = kind
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((4, 6), np.uint8)).save(buffer, format="TIFF", tiffinfo=directory)
    return buffer.getvalue()


SCALE = {33550: (12, (2.0, 3.0, 0.0)), 33922: (12, (0.0, 0.0, 0.0, 100.0, 200.0, 0.0))}


def test_pixel_is_point_shifts_half_a_pixel_like_gdal() -> None:
    keys = (1, 1, 0, 2, 1025, 0, 1, 2, 3072, 0, 1, 32633)  # PixelIsPoint, EPSG:32633
    georef = read_georeference(tagged_tiff({**SCALE, 34735: (3, keys)}))
    assert georef is not None and georef.epsg == 32633
    # The tie point (100, 200) is pixel (0, 0)'s centre, at pixel-edge coordinates (0.5, 0.5).
    assert (georef.a, georef.c, georef.e, georef.f) == (2.0, 99.0, -3.0, 201.5)
    area = read_georeference(tagged_tiff({**SCALE, 34735: (3, keys[:4] + keys[8:])}))
    assert area is not None and (area.c, area.f) == (100.0, 200.0)


@pytest.mark.parametrize(
    "tags",
    [
        {33550: (12, (1e300, 3.0, 0.0)), 33922: SCALE[33922]},  # would overflow to infinity
        {**SCALE, 274: (3, 6)},  # rotated by its orientation tag: the decoder turns the pixels
        {33550: SCALE[33550]},  # no tie point
        {**SCALE, 33550: (12, (0.0, 0.0, 0.0))},  # a singular transform
    ],
)
def test_unusable_georeferencing_is_ignored(tags: dict[int, tuple[int, tuple[float, ...]]]) -> None:
    assert read_georeference(tagged_tiff(tags)) is None


def test_plain_tiff_and_png_stay_in_pixel_coordinates(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(buffer, format="TIFF")
    assert read_georeference(buffer.getvalue()) is None
    assert read_georeference(png_bytes(np.zeros((4, 4), np.uint8))) is None
    assert read_georeference(b"II*\x00garbage") is None


# ---- budget and errors -------------------------------------------------------------------


@pytest.mark.parametrize("labels", all_maps(), ids=lambda m: f"{m.shape}")
def test_size_bounds_hold(labels: np.ndarray) -> None:
    classes = [f"c{i}" for i in range(int(labels.max()) + 1)]
    header = {"model": {"name": "x" * 40, "version": "1.0.0"}, "width": 1, "height": 1}
    from app.imaging.masks.coco import coco_document

    assert len(coco_document(labels, classes, header)) <= coco_size_bound(labels, classes)
    exact = feature_collection(labels, classes, 0.0, None, header)
    assert len(exact) <= geojson_size_bound(labels, classes, False)


@pytest.mark.parametrize("labels", all_maps(), ids=lambda m: f"{m.shape}")
def test_corner_count_is_the_traced_point_count(labels: np.ndarray) -> None:
    """The GeoJSON size estimate counts exactly the points tracing gives, band by band."""
    points = sum(r.shape[0] for c in np.unique(labels) for p in polygons(labels == c) for r in p)
    assert corner_visits(labels, rows_per_band=3) == corner_visits(labels) == points


def test_answer_budget_refuses_before_building(tmp_path: Path) -> None:
    write_model(tmp_path, "brightest", "tiny-rgb")
    settings = Settings(model_dir=tmp_path, intra_op_threads=1, max_answer_bytes=4096)
    noisy = png_bytes(np.random.default_rng(0).integers(0, 256, (64, 64, 3)).astype(np.uint8))
    with TestClient(create_app(settings)) as small:
        wait_ready(small)
        for fmt in ("coco", "geojson"):
            response = small.post(
                "/v1/models/tiny-rgb/segment", params={"format": fmt}, files={"image": ("x", noisy)}
            )
            assert response.status_code == 413, response.text
            assert response.headers["content-type"] == "application/problem+json"
            assert "SEG_MAX_ANSWER_BYTES" in response.json()["detail"]


@pytest.mark.parametrize("simplify", ["-1", "nan", "abc", "1e9"])
def test_bad_simplify_is_422(client: TestClient, simplify: str) -> None:
    response = client.post(
        "/v1/models/tiny-rgb/segment",
        params={"format": "geojson", "simplify": simplify},
        files={"image": ("x", colour_image())},
    )
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"


# ---- the shipped ISBI model on a real slice ---------------------------------------------


@pytest.mark.shared_data
def test_shipped_isbi_model_coco_and_geojson_match_its_png(tmp_path: Path) -> None:
    from tests.conftest import SHARED_DATA

    image = (SHARED_DATA / "isbi2012" / "images" / "21.png").read_bytes()
    settings = Settings(device="cpu", intra_op_threads=2)
    with TestClient(create_app(settings)) as shipped:
        wait_ready(shipped, timeout=120)
        expected = png_map(shipped, "unet-isbi", image)
        assert len(trace(expected == 1).areas) > 80  # about a hundred cells
        coco = json.loads(segment(shipped, "unet-isbi", image, format="coco"))
        for annotation in coco["annotations"]:
            mask = mask_api.decode(annotation["segmentation"]).astype(bool)
            assert np.array_equal(mask, expected == annotation["category_id"])
        response = shipped.post(
            "/v1/models/unet-isbi/segment",
            params={"format": "geojson"},
            files={"image": ("21.png", image)},
        )
        encode_ms = float(response.headers["Server-Timing"].split("encode;dur=")[1].split(",")[0])
        assert encode_ms < 3000  # about 150 ms on one shared core
        for feature in response.json()["features"]:
            back = rasterise(feature["geometry"], expected.shape, Affine.identity())
            assert np.array_equal(back, expected == feature["id"])

"""Class maps in other tools' formats: COCO RLE, GeoJSON polygons, Label Studio brush RLE."""

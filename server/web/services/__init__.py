"""Writes and file builders of the annotator's pages.

- ``export``: COCO JSON with RLE masks, and a RefCOCO-style zip (refs pickle, instances.json, images).
- ``bulk``: expressions from a CSV or JSON file, each row its own job.
- ``refine``: click-to-refine requests answered by SAM on a worker.
"""

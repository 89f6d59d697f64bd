"""Mask proposals: SAM / MobileSAM automatic masks (``amg``), post-filters (``filters``), prompt refine
(``refine``: embed once, answer many clicks) and the per-image cached generator run (``cached``)."""

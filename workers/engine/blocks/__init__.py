"""Building blocks every method may use: masks and ``Proposals`` (RLE at rest), mask proposals (SAM /
MobileSAM automatic masks, prompt refine), CLIP (one vision-tower adapter and mask / text features),
captions, expression parsing, geometry helpers and ranking. Nothing here belongs to one paper.
"""

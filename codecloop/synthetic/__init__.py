"""Synthetic datasets written in real datasets' on-disk layouts, for `codecloop make-synthetic` and the tests.

`datasets` draws the scenes and writes the folder and COCO layouts; `segmentation`, `depth` and `action`
write Cityscapes / VOC / ADE20K, KITTI / NYU Depth v2 and UCF101 / HMDB51. They read nothing at run time.
"""

from codecloop.synthetic.datasets import make_synthetic

__all__ = ["make_synthetic"]

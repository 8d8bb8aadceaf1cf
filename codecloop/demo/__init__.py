"""What `codecloop demo` runs on, all offline: `packaged_data` (photos and H.264 clips shipped inside pip
packages, written as a dataset) and `teacher` (the ImageNet EfficientNet-Lite0 whose weights ship in one)."""

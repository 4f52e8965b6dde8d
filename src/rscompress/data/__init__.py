"""Scene-classification data: scan a class-folder tree, decode once into a cache, split, batch.

Typical use (see ``prepare_data`` and ``BatchLoader``)::

    data = prepare_data(cfg.data, split_json=run / "split.json")
    train = BatchLoader(data.images, data.labels, data.train_indices, 64, shuffle=True,
                        augment=True, mean=data.mean, std=data.std, seed=seed)
"""

from rscompress.data.datasets import (
    KNOWN_DATASETS,
    BadImageError,
    DatasetInfo,
    SceneIndex,
    decode_image,
    resize_image,
    scan_folder,
)
from rscompress.data.loader import BatchLoader
from rscompress.data.prepare import (
    InspectReport,
    PreparedData,
    inspect_folder,
    prepare_data,
)
from rscompress.data.splits import Split

__all__ = [
    "KNOWN_DATASETS",
    "BadImageError",
    "BatchLoader",
    "DatasetInfo",
    "InspectReport",
    "PreparedData",
    "SceneIndex",
    "Split",
    "decode_image",
    "inspect_folder",
    "prepare_data",
    "resize_image",
    "scan_folder",
]

"""Model zoo. Importing this package registers every architecture."""

from rscompress.models import mobilenet, resnet, vgg  # noqa: F401  (registers builders)
from rscompress.models.complexity import count_macs_params
from rscompress.models.registry import built_as, create_model, is_known_model, list_models, register_model
from rscompress.models.se import (
    SEBatchNorm2d,
    SqueezeExcite,
    add_se_blocks,
    average_se_attention,
    fold_se_into_bn,
)
from rscompress.models.weights import LoadReport, load_weights, save_weights

__all__ = [
    "LoadReport",
    "SEBatchNorm2d",
    "SqueezeExcite",
    "add_se_blocks",
    "average_se_attention",
    "built_as",
    "count_macs_params",
    "create_model",
    "fold_se_into_bn",
    "is_known_model",
    "list_models",
    "load_weights",
    "register_model",
    "save_weights",
]
from rscompress.models import detection, ghostnet  # noqa: F401  (registers)

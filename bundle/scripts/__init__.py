# Copyright (c) the iFIM bundle contributors.
# Licensed under the Apache License, Version 2.0 (see LICENSE).
"""Public names of the iFIM bundle, so configs can say ``scripts.ifim_decompose`` or ``scripts.ShallowCNN``.

Names are imported on first use (PEP 562), not here: ``import scripts.ifim`` loads torch only, never MONAI's engines
or captum, so the engine stays usable on its own.
"""

from importlib import import_module

_PUBLIC = {
    "attribution": ("MAP_METHODS", "MAPS", "DEFAULT_STUDY_METHODS", "attribute", "compute_maps"),
    "data": ("build_cxr_datalist", "build_hcp_datalist", "build_oct_datalist", "build_simulated_datalist",
             "folder_datalist", "phantom_dataset", "phantom_slice", "write_datalist",
             "SkippingDataset"),
    "handlers": ("AttributionStudyHandler", "IFIMCSVSaver", "IFIMHandler", "InputProgressBar"),
    "ifim": ("IFIMResult", "fisher_quadratic", "ifim_decompose", "predictive_probs"),
    "inferers": ("IFIMInferer", "SelectOutput"),
    "networks": ("VGG16", "ShallowCNN", "get_network", "resnet18"),
    "report": ("write_report",),
    "sources": ("AsOwnGridd", "EnsureSpatialDimsd", "InvertToSourced", "LoadImageCheckedd", "RowsColumnsd",
                "SaveOnSourceGridd"),
    "study": ("AttributionStudy", "StudyResults"),
    "subjects": ("SimulateSubject", "SubjectSettings"),
    "tasks": ("TASKS", "Task"),
    "transforms": ("EnsureGrayscaled", "InsertGaussianSignal", "InsertGaussianSignald", "InsertLumpsd",
                   "InvertMonochrome1d", "PerSampleSeedd", "gaussian_blob", "image_transforms", "mri_transforms"),
    "visualize": ("SaveDecompositionFigured",),
}
_MODULE_OF = {name: module for module, names in _PUBLIC.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    """A public name, or a submodule (``scripts.tasks`` in a config expression), imported on first use."""
    if name in _MODULE_OF:
        value = getattr(import_module(f".{_MODULE_OF[name]}", __name__), name)
    else:
        try:
            value = import_module(f".{name}", __name__)
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)

"""Atlases: template, tissue maps, labels and the region table; label maps in other ids."""

from mambacontrol.atlas.atlas import (
    DEFAULT_ATLAS,
    DEFAULT_GRID,
    Atlas,
    Region,
    atlas_search_path,
    list_atlases,
    load_atlas,
)
from mambacontrol.atlas.segformats import (
    SegmentationMapping,
    detect_format,
    map_to_atlas,
    merge_with_propagated,
    segmentation_labels,
)

__all__ = ["DEFAULT_ATLAS", "DEFAULT_GRID", "Atlas", "Region", "SegmentationMapping",
           "atlas_search_path", "detect_format", "list_atlases", "load_atlas", "map_to_atlas",
           "merge_with_propagated", "segmentation_labels"]

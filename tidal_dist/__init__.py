"""tidal_dist: distributed active learning with training dynamics (TiDAL, Kye et al., ICCV 2023)."""

__version__ = "0.1.0"

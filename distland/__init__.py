"""distland: distributed loss-landscape evaluation (Li et al., "Visualizing the Loss Landscape of Neural Nets").

Importing the package imports neither mpi4py nor h5py's MPI driver; MPI lives in :mod:`distland.comm` alone.
"""
__version__ = "0.1.0"

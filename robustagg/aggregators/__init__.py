"""Robust aggregation rules and pre-aggregators; see :func:`get` and :func:`available`."""

from robustagg.aggregators import ops
from robustagg.aggregators.averaging import Mean
from robustagg.aggregators.base import Aggregator, NonFiniteUpdateWarning, PreAggregator
from robustagg.aggregators.centered_clipping import CenteredClipping
from robustagg.aggregators.convert import as_matrix, flatten, unflatten
from robustagg.aggregators.coordinate import MeaMed, Median, TrimmedMean
from robustagg.aggregators.distance import Bulyan, Krum, MultiKrum
from robustagg.aggregators.flag import FlagAggregator
from robustagg.aggregators.geometric_median import GeometricMedian
from robustagg.aggregators.phocas import Phocas
from robustagg.aggregators.pipeline import Pipeline, pipeline
from robustagg.aggregators.preaggregators import ARC, NNM, Bucketing, Clipping
from robustagg.aggregators.registry import REGISTRY, available, get, register
from robustagg.aggregators.subset import CGE, MDA, SMEA
from robustagg.aggregators.filtering import CAF, DnC
from robustagg.aggregators.clustering import ClippedClustering
from robustagg.aggregators.fltrust import FLTrust
from robustagg.aggregators.monna import MoNNA

__all__ = [
    "ARC", "Aggregator", "Bucketing", "Bulyan", "CAF", "CGE", "ClippedClustering", "DnC", "FLTrust", "MDA", "MoNNA", "SMEA", "CenteredClipping", "Clipping", "FlagAggregator",
    "GeometricMedian",
    "Krum", "Mean", "MeaMed", "Median", "MultiKrum", "NNM", "NonFiniteUpdateWarning", "Phocas", "Pipeline",
    "PreAggregator", "REGISTRY", "TrimmedMean", "as_matrix", "available", "flatten", "get", "ops",
    "pipeline", "register", "unflatten",
]

"""Cheap, trustworthy fitness: anchor items, IRT fitted on the run's own respondents,
and the estimators that turn a candidate's anchor scores into a full-split score."""

from .anchors import AnchorError, Anchors, select_anchors
from .build import build_estimator, estimate_fitness, prepare_estimator
from .estimators import ESTIMATORS, GMPIRT, GPIRT, MPIRT, PIRT, Estimator, EstimatorError, Full, Mean, Weighted
from .fits import IRTFits
from .irt import IRTError, IRTModel, Priors, fit_irt
from .respondents import Respondent, Responses, collect_responses, random_recipe, respondent_set, single_model

__all__ = [
    "ESTIMATORS",
    "GMPIRT",
    "GPIRT",
    "MPIRT",
    "PIRT",
    "AnchorError",
    "Anchors",
    "Estimator",
    "EstimatorError",
    "Full",
    "IRTError",
    "IRTFits",
    "IRTModel",
    "Mean",
    "Priors",
    "Respondent",
    "Responses",
    "Weighted",
    "build_estimator",
    "collect_responses",
    "estimate_fitness",
    "fit_irt",
    "prepare_estimator",
    "random_recipe",
    "respondent_set",
    "select_anchors",
    "single_model",
]

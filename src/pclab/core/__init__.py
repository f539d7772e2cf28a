"""pclab's predictive-coding core: energies, the network graph, relaxation and learning rules.

Imports nothing else of pclab.
"""

from .energy import CrossEntropy, Energy, Gaussian
from .graph import PCN, Edge, Node, State
from .layers import ACTIVATIONS, Dense, Stack, activation
from .learning import (
    Backprop,
    BPThroughInference,
    IncrementalPC,
    LearningRule,
    PCLearning,
    ZeroDivergenceIL,
)
from .loss import TaskLoss
from .optim import SGD, Adam, LatentOptimizer, TorchOptimizer
from .precision import Constant, Decaying, PrecisionSchedule, Spiking, schedule
from .readout import classify, generate, reconstruct
from .relax import Inference, Relaxed, Trajectory, free_nodes, relax

__all__ = [
    "ACTIVATIONS", "Adam", "Backprop", "BPThroughInference", "Constant", "CrossEntropy", "Decaying",
    "Dense", "Edge", "Energy", "Gaussian", "IncrementalPC", "Inference", "LatentOptimizer",
    "LearningRule", "Node", "PCLearning", "PCN", "PrecisionSchedule", "Relaxed", "SGD", "Spiking",
    "Stack", "State", "TaskLoss", "TorchOptimizer", "Trajectory", "ZeroDivergenceIL", "activation",
    "classify", "free_nodes", "generate", "reconstruct", "relax", "schedule",
]

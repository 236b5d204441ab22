"""Continual-learning strategies, one per module: ``ContinualModule`` subclasses, and ``Plugin`` subclasses for the
behaviours that combine with any strategy (regularizers such as EWC)."""

from clfw.strategies.agem import AGEM
from clfw.strategies.aper import APER
from clfw.strategies.bic import BiasCorrection
from clfw.strategies.clser import CLSER
from clfw.strategies.coda_prompt import CODAPrompt
from clfw.strategies.cumulative import Cumulative
from clfw.strategies.der import DER
from clfw.strategies.derpp import DERPP
from clfw.strategies.dualprompt import DualPrompt
from clfw.strategies.ease import EASE
from clfw.strategies.er import ER
from clfw.strategies.er_ace import ERACE
from clfw.strategies.er_aml import ERAML
from clfw.strategies.ewc import EWC
from clfw.strategies.gdumb import GDumb
from clfw.strategies.gem import GEM
from clfw.strategies.gradient_projection import GradientProjection
from clfw.strategies.icarl import ICaRL
from clfw.strategies.inflora import InfLoRA
from clfw.strategies.joint import Joint
from clfw.strategies.l2p import L2P
from clfw.strategies.lpr import LayerwiseProximalReplay
from clfw.strategies.lr_warmup import LRWarmup
from clfw.strategies.lucir import LUCIR
from clfw.strategies.lwf import LwF
from clfw.strategies.mas import MAS
from clfw.strategies.mir import MIR
from clfw.strategies.naive import Naive
from clfw.strategies.nearest_mean import NearestMeanHead
from clfw.strategies.podnet import PODNet
from clfw.strategies.ranpac import RanPAC
from clfw.strategies.refresh import Refresh
from clfw.strategies.si import SI
from clfw.strategies.simplecil import SimpleCIL
from clfw.strategies.slca import SLCA
from clfw.strategies.vit_baseline import ViTBaseline
from clfw.strategies.weight_aligning import WeightAligning
from clfw.strategies.xder import XDER

__all__ = [
    "AGEM",
    "APER",
    "CLSER",
    "DER",
    "DERPP",
    "EASE",
    "ER",
    "ERACE",
    "ERAML",
    "EWC",
    "GEM",
    "L2P",
    "LUCIR",
    "MAS",
    "MIR",
    "SI",
    "SLCA",
    "XDER",
    "BiasCorrection",
    "CODAPrompt",
    "Cumulative",
    "DualPrompt",
    "GDumb",
    "GradientProjection",
    "ICaRL",
    "InfLoRA",
    "Joint",
    "LRWarmup",
    "LayerwiseProximalReplay",
    "LwF",
    "Naive",
    "NearestMeanHead",
    "PODNet",
    "RanPAC",
    "Refresh",
    "SimpleCIL",
    "ViTBaseline",
    "WeightAligning",
]

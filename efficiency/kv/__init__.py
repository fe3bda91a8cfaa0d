"""KV-cache eviction policies: one small dataclass per file, a registry by name, composable wrappers."""
from .registry import BUILTIN_MODULES, POLICIES, get_policy, load_builtins, register  # noqa: I001
from .base import AttentionScorePolicy, ScorePolicy, group_reduce
from .a2sf import A2SF
from .adakv import AdaKV, AdaptiveHeadBudgets
from .compose import Sequential
from .h2o import H2O
from .key_norm import KeyNorm
from .pyramid import PyramidBudgets, PyramidKV
from .random_policy import RandomPolicy
from .snapkv import SnapKV
from .streaming_llm import StreamingLLM
from .tova import TOVA
from .ragged import RaggedLayer, ragged_attention, ragged_bytes_formula
from .zigzag import UncertaintyBudgets, ZigZagKV
from .kvzip import KVzip
from .hashevict import HashEvict
from .ems import EMS, evict_then_merge
from .lexico import LexicoCompression, LexicoLayer
from .lexico import bytes_formula as lexico_bytes_formula
from .lexico_dictionary import LexicoDictionary
from .omp import omp

load_builtins()

__all__ = [
    "POLICIES", "BUILTIN_MODULES", "get_policy", "register", "load_builtins", "ScorePolicy",
    "AttentionScorePolicy", "group_reduce", "Sequential", "StreamingLLM", "H2O", "A2SF", "SnapKV", "KeyNorm",
    "TOVA", "RandomPolicy", "PyramidKV", "PyramidBudgets", "AdaKV", "AdaptiveHeadBudgets", "RaggedLayer",
    "ragged_attention", "ragged_bytes_formula", "ZigZagKV", "UncertaintyBudgets", "KVzip", "HashEvict", "EMS",
    "evict_then_merge", "LexicoCompression", "LexicoLayer", "lexico_bytes_formula", "LexicoDictionary", "omp",
]

"""Every section class by its params.yaml name: for what walks the whole schema (the docs' and the schema's tests);
a stage imports only the modules of the sections it reads."""
from __future__ import annotations

from llmshrink.params.benchmark import Benchmark
from llmshrink.params.data import Data
from llmshrink.params.depth import Prune
from llmshrink.params.evaluation import Eval
from llmshrink.params.explore import Explore
from llmshrink.params.gguf import Export, GptqGguf, KquantBase
from llmshrink.params.gptq import Eora, Gptq
from llmshrink.params.imatrix import Imatrix
from llmshrink.params.kv import Kv
from llmshrink.params.lora import Lora
from llmshrink.params.model import Model
from llmshrink.params.search import Search
from llmshrink.params.width import Structured, Wanda

SECTIONS: dict[str, type] = {cls.SECTION: cls for cls in (
    Model, Data, Prune, Wanda, Structured, Lora, Gptq, Eora, Eval, Benchmark, Explore, Export, Imatrix, KquantBase,
    GptqGguf, Search, Kv)}

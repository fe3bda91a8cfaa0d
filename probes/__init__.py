"""Analysis modules built on ``workbench.Model``, one package each:

- ``probes.sinks``: attention sinks and extreme tokens;
- ``probes.factual``: factual-recall attribution (DLA, mechanisms, patching, lenses, LRE, SAT probe);
- ``probes.transcoders``: transcoders, features and circuits;
- ``probes.frames``: frame representations of multi-token words and concepts.

Import from the package you need (``from probes.sinks import sink_report``).
"""

"""The doctor: which RoPE does a black box (a function, a config, a checkpoint) really compute?

A function: calls (each call on its own copy, twice) -> probe (the fingerprint's stages: precision,
structure, angles, fitting, verification) -> comparison (compare two; explain: what differs, the
fix, B with the fix composed).  A model: layerdiff (first diverging module between two models).
A checkpoint: weights (q/k tensors of state dicts, safetensors dirs, GGUF files) -> infer_layout
(the layout in trained weights), checkpoint_diff (B's q/k rows as A's, permuted), installed_transformers
(the installed release measured from its own modeling code), checkpoint_report; report_text
prints them.  arguments: the checks every entry point makes.  zoo: conventions found in the wild.
"""

"""The doctor: which RoPE does a black box (a function, a config, a checkpoint) really compute?

probe (measure a rope function on basis vectors) -> fitting (propose specs that explain the
measurement) -> comparison (compare two, explain the difference, propose and verify a fix);
layerdiff (first diverging module between two models); zoo (conventions found in the wild).
"""

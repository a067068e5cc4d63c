"""The backend-neutral core, written once against the Python Array API.

- :mod:`.flat`: batch flattening and score preparation (validity, NaN poisoning);
- :mod:`.plan`: the scores-only successive-halving tournament;
- :mod:`.hard`: exact top-k selection in the same plan layout;
- :mod:`.apply`: the weighted gather-sum that applies a plan to E;
- :mod:`.baseline`: the iterative-softmax baseline (Goyal et al. 2017);
- :mod:`.metric`: the normalized Chamfer cosine similarity.
"""

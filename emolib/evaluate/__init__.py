"""Robustness and efficiency of trained models, from the raw inputs (notebook 07).

* ``corruptions``: seeded corruptions of cache records (audio noise, face blur / JPEG / occlusion, frame drop,
  word dropout) and the missing-modality condition;
* ``robustness``: a run's test split under every condition, scored with the run's protocols and valid thresholds;
* ``efficiency``: parameters, FLOPs, latency, peak memory and raw-video-to-emotions time of every registered model;
* ``report``: the tables, figures and computed findings of notebook 07.

Layer: above ``train``, ``records``, ``predict`` and ``bench``, beside ``tables`` (``tests/test_layers.py``).
"""

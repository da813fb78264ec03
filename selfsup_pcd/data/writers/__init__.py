"""Writers of datasets in their native on-disk layouts (ScanNet, S3DIS, VoteNet, ModelNet40 h5).

Each module writes one family exactly as it is distributed, from arrays or procedural scenes, so that the
readers and the experiments can be tested on small synthetic copies (``python -m selfsup_pcd.synth``).
Items are written atomically: a file or scene folder appears under its final name only when complete.
"""

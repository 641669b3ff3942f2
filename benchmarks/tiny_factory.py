"""The tiny factory settings the flow and deployment tests run: seconds per step on 2 cores."""

TINY = {
    "name": "tiny",
    "dataset": {"source": "phantom", "n": 400, "size": 32, "seed": 2},
    "classifier": {"epochs": 2, "batch_size": 64},
    "generator": {"patch_size": 8, "depth": 2, "num_heads": 2, "head_dim": 16, "steps": 20, "batch_size": 16},
    # EigenCAM does not need a trained classifier's gradients, so masks exist at this size; a
    # 2-epoch classifier at 32 px calls little, so neither the gates nor the removal check apply
    # (tests/test_flows.py shows the classifier gate refusing it)
    "augment": {"batch_size": 8, "cam_method": "eigencam", "mask": {"max_area": 0.6}, "min_class_auroc": 0,
                "localise": {"gate": False}, "verify_removal": False,
                "inpaint": {"steps": 3, "jump_length": 3, "resample": 1}, "quality_max_z": 1000.0,
                "ood_filter": False},  # a 20-step DiT fills with noise: tests of the product path, not of the filter
    "finetune": {"epochs": 2, "bootstrap": 20},
}

"""Which choices move the frozen-feature probe on bbc-news: standardising, refitting on train+dev, sklearn's default C.

Reads the features from the cache a `peftkit compare --methods feature-probe` run filled (it asserts that
nothing is computed), on the same seeds, splits and dev carves. Usage:
    PEFTKIT_CACHE=... python benchmarks/feature_probe_variants.py 800|all MAX_LENGTH > result.json
"""
import dataclasses, json, sys, warnings
import numpy as np, torch
torch.set_num_threads(1)
warnings.filterwarnings("ignore")
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from peftkit import data
from peftkit.loading import default_model_path
from peftkit.methods.feature_probe import FeatureProbeModel, sentence_pooling
from peftkit.models.backbones import backbone_identity
from peftkit.training.feature_probe import FeatureCache, _load_backbone, extract_features, default_cache_directory

max_train = None if sys.argv[1] == "all" else int(sys.argv[1])
max_length = int(sys.argv[2])
path = default_model_path()
results = {}
for seed in (0, 1, 2):
    task = data.load_task(data.TaskConfig(task="bbc-news", max_length=max_length, max_train_examples=max_train, seed=seed))
    task, dev = data.carve_dev_split(task, 0.2, seed)
    info = task.to_info()
    backbone, tok = _load_backbone(path, info)
    pooling = sentence_pooling(path, tok)
    probe = FeatureProbeModel(backbone, pooling, torch.zeros(5, 384), torch.zeros(5))
    cache = FeatureCache(default_cache_directory(), backbone_identity(backbone), "mean-normalized")
    tr, va = data.encode_task(task, tok, max_length)
    _, dv = data.encode_task(dataclasses.replace(task, train=dev.select(range(1)), validation=dev), tok, max_length)
    col = data.make_collator(task.kind, tok)
    X = {n: np.stack(extract_features(probe, s, col, cache, desc=n)) for n, s in (("train", tr), ("dev", dv), ("val", va))}
    y = {n: np.asarray(s["labels"]) for n, s in (("train", tr), ("dev", dv), ("val", va))}
    assert cache.misses == 0, "run the compare first: these features are not cached"
    cs = [1e-4, 1e-3, 1e-2, 1e-1, 1, 10, 100]
    for standardise in (True, False):
        def fit(Xt, yt, c):
            sc = StandardScaler(with_mean=standardise, with_std=standardise).fit(Xt)
            return sc, LogisticRegression(C=c, max_iter=2000).fit(sc.transform(Xt), yt)
        def acc(m, Xe, ye):
            return float((m[1].predict(m[0].transform(Xe)) == ye).mean())
        dev_scores = [acc(fit(X["train"], y["train"], c), X["dev"], y["dev"]) for c in cs]
        best = cs[int(np.argmax(dev_scores))]
        name = "standardised" if standardise else "raw (L2-normalised)"
        results.setdefault(f"{name}, C on dev", []).append(acc(fit(X["train"], y["train"], best), X["val"], y["val"]))
        results.setdefault(f"{name}, C on dev, refit on train+dev", []).append(
            acc(fit(np.concatenate([X["train"], X["dev"]]), np.concatenate([y["train"], y["dev"]]), best), X["val"], y["val"]))
        results.setdefault(f"{name}, C = 1 (sklearn default), train+dev", []).append(
            acc(fit(np.concatenate([X["train"], X["dev"]]), np.concatenate([y["train"], y["dev"]]), 1.0), X["val"], y["val"]))
print(json.dumps({"max_train_examples": max_train, "max_length": max_length,
                  "results": {k: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)), "per_seed": v} for k, v in results.items()}}, indent=1))

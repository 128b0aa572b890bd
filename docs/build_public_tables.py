"""Rebuild the public tables of ``sweeps/public/`` from their sources (not part of the package).

    python docs/build_public_tables.py MIRRORS OUT

``MIRRORS`` holds git clones named ``owner+name`` (``TencentARC+SFDA``, ``zhangyikaii+Model-Spider``,
``TransferGraph+transfergraph``, ``alizkzm+pert_robust_platform``); each file is read at the commit
``sweeps/public/README.md`` names (``git show COMMIT:PATH``), so a newer clone gives the same
tables. Every number written comes from those files; the only arithmetic is percentages / 100 and
the backbone parameter counts and feature widths, counted here from torchvision's architecture
definitions (no weights needed). ``OUT`` is written as ``<table>_records.csv`` and
``<table>_models.csv``; ``diff`` it against ``sweeps/public/`` to check the shipped tables.
"""

from __future__ import annotations

import ast
import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

COMMITS = {
    "TencentARC+SFDA": "3b7edf76bd682acb1eba4f4c5eb7ea7f3f7f6c59",
    "alizkzm+pert_robust_platform": "5fb15f44125a24dd35a388ac16c159fdb99201bf",
    "zhangyikaii+Model-Spider": "d2a53e4d19db37a740c0807570f71dfaa06ab83d",
    "TransferGraph+transfergraph": "0458aff3ae6832926bed0bac515f243f99a98df0",
}
TORCHVISION = ["resnet34", "resnet50", "resnet101", "resnet152", "densenet121", "densenet169",
               "densenet201", "mnasnet1_0", "mobilenet_v2", "googlenet", "inception_v3"]


def show(mirrors: Path, repo: str, path: str) -> str:
    return subprocess.run(["git", "-C", str(mirrors / repo / "repo"), "show",
                           f"{COMMITS[repo]}:{path}"], check=True, capture_output=True,
                          text=True).stdout


def dict_literal(source: str, name: str) -> dict:
    """The dict assigned to ``name`` in a Python file, read as a literal (nothing is run)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name
                                                for t in node.targets):
            return ast.literal_eval(node.value)
    raise KeyError(name)


def long(table: dict, metric: str, scale: float = 100.0) -> list[tuple]:
    return [(m, t, metric, round(v / scale, 6)) for t, row in table.items() for m, v in row.items()]


def torchvision_meta(names: list[str]) -> pd.DataFrame:
    """ImageNet-1k top-1 of torchvision's IMAGENET1K_V1 weights (their metadata), the backbone's
    parameters (all but the final classifier and the auxiliary classifiers) and feature width."""
    import torch
    from torchvision import models

    rows = []
    for name in names:
        weights = models.get_model_weights(name).IMAGENET1K_V1
        kwargs = {"aux_logits": True, "init_weights": False} if name in ("googlenet",
                                                                         "inception_v3") else {}
        net = models.get_model(name, weights=None, **kwargs)
        head = "fc" if hasattr(net, "fc") else "classifier"
        skip = {head, "AuxLogits", "aux1", "aux2"}
        params = sum(p.numel() for n, p in net.named_parameters() if n.split(".")[0] not in skip)
        last = [m for m in getattr(net, head).modules() if isinstance(m, torch.nn.Linear)][-1]
        rows.append({"model": name,
                     "imagenet_acc": round(weights.meta["_metrics"]["ImageNet-1K"]["acc@1"] / 100, 5),
                     "params": params, "feature_dim": last.in_features})
    return pd.DataFrame(rows)


def write(out: Path, name: str, rows: list[tuple], meta: pd.DataFrame | None) -> None:
    records = pd.DataFrame(rows, columns=["model", "task", "metric", "value"])
    records.to_csv(out / f"{name}_records.csv", index=False)
    if meta is not None:
        meta.to_csv(out / f"{name}_models.csv", index=False)
    print(f"{name}: {len(records)} rows, {records.model.nunique()} models, "
          f"{records.task.nunique()} tasks, metrics {sorted(records.metric.unique())}")


def logme11(mirrors: Path, out: Path) -> None:
    full = dict_literal(show(mirrors, "TencentARC+SFDA", "tw_group1.py"), "finetune_acc")
    head = dict_literal(show(mirrors, "alizkzm+pert_robust_platform", "tw_group1.py"),
                        "head_training_acc")
    same = dict_literal(show(mirrors, "alizkzm+pert_robust_platform", "tw_group1.py"),
                        "full_training_acc")
    assert same == full, "the two repositories' full fine-tune tables differ"
    rows = []
    for task in full:
        for model in full[task]:
            rows.append((model, task, "finetune_test_acc", round(full[task][model] / 100, 6)))
            rows.append((model, task, "proxy/linear", round(head[task][model] / 100, 6)))
    write(out, "logme11", rows, torchvision_meta(TORCHVISION))


def sfda_ssl12(mirrors: Path, out: Path) -> None:
    full = dict_literal(show(mirrors, "TencentARC+SFDA", "tw_group2.py"), "finetune_acc")
    rows = long(full, "finetune_test_acc")
    models = sorted({m for row in full.values() for m in row})
    # every model is torchvision's ResNet-50 without its fc (SFDA's forward_feature_group2.py)
    resnet50 = torchvision_meta(["resnet50"]).iloc[0]
    meta = pd.DataFrame({"model": models, "params": int(resnet50["params"]),
                         "feature_dim": int(resnet50["feature_dim"])})
    write(out, "sfda_ssl12", rows, meta)


MODELSPIDER_TASKS = {"Aircraft": "aircraft", "Caltech101": "caltech101", "Cars": "cars",
                     "CIFAR10": "cifar10", "CIFAR100": "cifar100", "DTD": "dtd", "Pet": "pets",
                     "SUN397": "sun397"}
MODELSPIDER_PROXIES = {"H-Score": "hscore", "LEEP": "leep", "LogME": "logme", "NCE": "nce",
                       "NLEEP": "nleep", "OTCE": "otce", "PACTranDirichlet": "pactran",
                       "GBC": "gbc", "LFC": "lfc"}


def modelspider10(mirrors: Path, out: Path) -> None:
    info = show(mirrors, "zhangyikaii+Model-Spider", "learnware/learnware_info.py")
    block = info[info.index("DATA_SPECIFIC_RANK = {"):info.index("BKB_SPECIFIC_RANK =")]
    order = ast.literal_eval(re.search(r"BKB_SPECIFIC_RANK = (\[[^\]]*\])", info).group(1))
    finetune = {m.group(1): [float(x) for x in m.group(2).split(",")] for m in re.finditer(
        r"'(\w+)': \{\s*'Finetuning': torch.tensor\(\[([^\]]+)\]\)", block)}
    scores = pd.read_csv(io.StringIO(show(mirrors, "zhangyikaii+Model-Spider",
                                          "assests/baseline_results.csv")))
    rows = []
    for source, task in MODELSPIDER_TASKS.items():
        sub = scores[scores.Dataset == source].set_index("Model")
        for model, acc in zip(order, finetune[source]):
            rows.append((model, task, "finetune_test_acc", round(acc / 100, 6)))
            rows += [(model, task, f"proxy/{p}", float(sub.loc[model, col]))
                     for col, p in MODELSPIDER_PROXIES.items()]
    write(out, "modelspider10", rows, torchvision_meta(order))


TRANSFERGRAPH_PROXIES = {"TransferabilityMethod.LOG_ME": "proxy/logme",
                         "TransferabilityMethod.REG_H_SCORE": "proxy/reg_hscore"}


def transfergraph(mirrors: Path, out: Path) -> None:
    base = "resources/experiments/image_classification/"
    runs = pd.read_csv(io.StringIO(show(mirrors, "TransferGraph+transfergraph",
                                        base + "records.csv")))
    scores = pd.read_csv(io.StringIO(show(mirrors, "TransferGraph+transfergraph",
                                          base + "transferability_score_records.csv")))
    config = pd.read_csv(io.StringIO(show(mirrors, "TransferGraph+transfergraph",
                                          base + "model_config_dataset.csv")))
    assert not runs.duplicated(["model", "finetuned_dataset"]).any()
    scores = scores[scores.model == scores.model_name]  # 2 rows name two different models
    per = scores.groupby(["model", "target_dataset", "metric"])["score"].agg(["count", "min",
                                                                              "max"])
    # a pair scored twice with different values: which one TransferGraph used is not said
    ambiguous = {(m, t) for (m, t, _), r in per.iterrows() if r["count"] > 1 and r["min"] != r["max"]}
    one = per[per["count"] >= 1].reset_index()
    one = one[[(m, t) not in ambiguous for m, t in zip(one.model, one.target_dataset)]]
    one = one[np.isfinite(one["min"])]
    both = one.groupby(["model", "target_dataset"]).filter(lambda g: len(g) == 2)
    keep = set(zip(both.model, both.target_dataset))
    rows = []
    for _, r in runs.iterrows():
        if (r.model, r.finetuned_dataset) in keep:
            rows.append((r.model, r.finetuned_dataset, "finetune_test_acc",
                         float(r.eval_accuracy)))
    for _, r in both.iterrows():
        if (r.model, r.target_dataset) in {(m, t) for m, t, *_ in rows}:
            rows.append((r.model, r.target_dataset, TRANSFERGRAPH_PROXIES[r.metric],
                         float(r["min"])))
    rows.sort(key=lambda x: (x[1], x[0], x[2]))
    models = sorted({m for m, *_ in rows})
    params = config.set_index("model")["number_of_parameters"]
    meta = pd.DataFrame({"model": models,
                         "params": [None if pd.isna(params.get(m)) else int(params[m])
                                    for m in models]})
    print(f"transfergraph: {len(ambiguous)} (model, task) pairs scored twice with different "
          f"values left out: {sorted({t for _, t in ambiguous})}")
    write(out, "transfergraph", rows, meta)


def main(argv: list[str]) -> int:
    mirrors, out = Path(argv[0]), Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for build in (logme11, modelspider10, sfda_ssl12, transfergraph):
        build(mirrors, out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

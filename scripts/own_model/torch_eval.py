"""The PyTorch script `oodkit eval` replaces (issue 37's job): read the PNG folders, run the
CIFAR ResNet-20 once per image, fit and score MLS, Energy, KNN (k = 50) and ViM (99 % of the
variance), print each AUROC. Same preprocessing as `oodkit eval --normalize imagenet`.

Usage: python torch_eval.py WEIGHTS.safetensors DATA_DIR THREADS
Prints `RESULT {json}`: the wall time of the whole job (process start to the last AUROC,
imports excluded) and the AUROCs.
"""
import json, os, sys, time
t_start = time.perf_counter()
import numpy as np, torch, torch.nn.functional as F
from PIL import Image
from sklearn.metrics import roc_auc_score

weights, data, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(threads)
t0 = time.perf_counter()

def resnet20():
    # The akamaster layout, as ../shared/peer/resnet20_torch_bench.py defines it (its
    # module-level benchmark is not run).
    import types
    here = os.path.dirname(os.path.abspath(__file__))
    peer = os.environ.get("PEER", os.path.join(here, "..", "..", "..", "shared", "peer"))
    src = open(os.path.join(peer, "resnet20_torch_bench.py")).read()
    mod = types.ModuleType("resnet20")
    exec(src.split("weights, threads = sys.argv[1]")[0], mod.__dict__)
    return mod.ResNet(3)

def images(folder):
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs if f.endswith(".png"))
    x = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files]).astype(np.float32) / 255.0
    x = (x - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]
    return torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32))

from safetensors.torch import load_file
net = resnet20(); net.load_state_dict(load_file(weights), strict=False); net.eval()
features = {}
net.linear.register_forward_hook(lambda m, i, o: features.__setitem__("f", i[0]))

def run(x):
    logits, feats = [], []
    with torch.no_grad():
        for b in x.split(128):
            logits.append(net(b)); feats.append(features["f"])
    return torch.cat(logits).double(), torch.cat(feats).double()

fit_l, fit_f = run(images(os.path.join(data, "fit")))
id_l, id_f = run(images(os.path.join(data, "id")))
ood_l, ood_f = run(images(os.path.join(data, "ood")))

def knn(k=50):
    bank = F.normalize(fit_f, dim=1)
    def score(f):
        d = torch.cdist(F.normalize(f, dim=1), bank) ** 2
        return d.topk(k, largest=False).values[:, -1]
    return score

def vim(explained=0.99):
    w, b = net.linear.weight.detach().double(), net.linear.bias.detach().double()
    u = -torch.linalg.pinv(w) @ b
    x = fit_f - u
    vals, vecs = torch.linalg.eigh(x.T @ x / len(x))
    vals, vecs = vals.flip(0), vecs.flip(1)
    dims = int((vals.cumsum(0) / vals.sum() < explained).sum()) + 1
    ns = vecs[:, dims:]
    alpha = fit_l.max(1).values.sum() / ((x @ ns).norm(dim=1)).sum()
    return lambda f, l: alpha * ((f - u) @ ns).norm(dim=1) - torch.logsumexp(l, 1)

detectors = {
    "mls": lambda f, l: -l.max(1).values,
    "energy": lambda f, l: -torch.logsumexp(l, 1),
    "knn": lambda f, l, s=knn(): s(f),
    "vim": vim(),
}
aurocs = {}
for name, score in detectors.items():
    s_in, s_out = score(id_f, id_l).numpy(), score(ood_f, ood_l).numpy()
    aurocs[name] = roc_auc_score(np.r_[np.zeros(len(s_in)), np.ones(len(s_out))], np.r_[s_in, s_out])
print("RESULT " + json.dumps({"threads": threads, "seconds": round(time.perf_counter() - t0, 2),
                              "auroc": {k: round(v, 6) for k, v in aurocs.items()}}))

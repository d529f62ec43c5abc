#!/usr/bin/env python3
"""The PyTorch side of Attune's speed benchmark (`scripts/bench.sh`, `attune-bench`).

Not meant to be run by hand: `attune-bench` starts it as a child process and talks to it in
JSON lines (one request on stdin, one answer on stdout; logs go to stderr), so that each
PyTorch measurement runs right next to the matching Attune measurement on the same machine
state. It loads the very safetensors files Attune exported, reads the same stream (raw u8
images, divided by 255 exactly as Attune does), and runs the methods the way their official
code writes them (TENT: BN in train mode without running statistics, only the BN affine
parameters trained, Adam; EATA: entropy + redundancy filters, confidence weights, Fisher
regularizer estimated on clean training images with argmax pseudo-labels; CoTTA: student, EMA
teacher and anchor, augmentation-averaged targets, stochastic restore).

Requests:
  {"cmd": "hello"}                                   -> torch version, threads, device
  {"cmd": "matmul", "n": 1024, "repeats": 5}         -> GFLOP/s of an n×n×n f32 matmul (median)
  {"cmd": "load", "name", "arch", "weights", "normalization", "classes",
   "stream": {"path", "n", "h", "w"}, "clean": {"path", "n", "h", "w"}}
  {"cmd": "bench", "model", "method", "batch", "batches_per_repeat", "repeats", "warmup",
   "spec": {...}}                                    -> images/s of every repeat ("spec": the
                                                        method's spec, as Attune serializes it)
  {"cmd": "parity", "model", "method", "batch", "batches", "out", "spec": {...}}
                                                     -> writes the logits of every batch, then of
                                                        a re-prediction of batch 0, as raw f32
  {"cmd": "quit"}
"""
import json
import math
import statistics
import struct
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def log(*a):
    print("[bench_torch]", *a, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# safetensors without the safetensors package: 8-byte little-endian header length, JSON header,
# raw little-endian tensor bytes.
DTYPES = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "I64": np.int64, "U8": np.uint8}


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    base = 8 + n
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        s, e = meta["data_offsets"]
        arr = np.frombuffer(raw[base + s:base + e], dtype=DTYPES[meta["dtype"]]).reshape(meta["shape"])
        out[name] = torch.from_numpy(arr.astype(np.float32).copy())
    return out


# ---------------------------------------------------------------------------------------------
# The two architectures, with parameter names equal to Attune's safetensors keys.
class ConvBn(nn.Module):
    def __init__(self, cin, cout, k, stride, pad):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride=stride, padding=pad, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return self.bn(self.conv(x))


class Cnn(nn.Module):
    def __init__(self, channels, convs_per_stage, cin, side, classes):
        super().__init__()
        self.features = nn.ModuleList()
        c, s = cin, side
        for i, w in enumerate(channels):
            stage = nn.ModuleList()
            for _ in range(convs_per_stage):
                stage.append(ConvBn(c, w, 3, 1, 1))
                c = w
            self.features.append(stage)
            if i + 1 < len(channels):
                s //= 2
        self.fc = nn.Linear(c * s * s, classes)

    def forward(self, x):
        n = len(self.features)
        for i, stage in enumerate(self.features):
            for blk in stage:
                x = F.relu(blk(x))
            if i + 1 < n:
                x = F.max_pool2d(x, 2)
        return self.fc(x.flatten(1))


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = ConvBn(cin, cout, 1, stride, 0) if stride != 1 or cin != cout else None

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return F.relu(h + (self.shortcut(x) if self.shortcut is not None else x))


class ResNet(nn.Module):
    def __init__(self, depth, width, cin, classes):
        super().__init__()
        n = (depth - 2) // 6
        self.stem = ConvBn(cin, width, 3, 1, 1)
        c = width
        for stage, (mult, stride) in enumerate([(1, 1), (2, 2), (4, 2)]):
            blocks = nn.ModuleList()
            for i in range(n):
                blocks.append(Block(c, width * mult, stride if i == 0 else 1))
                c = width * mult
            setattr(self, f"layer{stage + 1}", blocks)
        self.fc = nn.Linear(c, classes)

    def forward(self, x):
        x = F.relu(self.stem(x))
        for stage in (self.layer1, self.layer2, self.layer3):
            for b in stage:
                x = b(x)
        return self.fc(x.mean((2, 3)))


class Normalized(nn.Module):
    """Images in [0, 1] → (x − mean)/std, written as x·(1/std) + (−mean/std) like Attune."""

    def __init__(self, net, mean, std):
        super().__init__()
        self.net = net
        self.mul = 1.0 / std
        self.add = -mean / std

    def forward(self, x):
        return self.net(x * self.mul + self.add)


def build(spec, device):
    arch = spec["arch"]
    cin, side = 1, 28
    if arch["arch"] == "cnn":
        net = Cnn(arch["channels"], arch.get("convs_per_stage", 1), cin, side, spec["classes"])
    else:
        net = ResNet(arch["depth"], arch["width"], cin, spec["classes"])
    state = read_safetensors(spec["weights"])
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise SystemExit(f"weights {spec['weights']}: missing {missing}, unexpected {unexpected}")
    norm = spec["normalization"]
    if len(norm["mean"]) != 1:
        raise SystemExit("only single-channel inputs are benchmarked")
    return Normalized(net, float(norm["mean"][0]), float(norm["std"][0])).to(device)


def images(spec, device):
    n, h, w = spec["n"], spec["h"], spec["w"]
    u8 = np.fromfile(spec["path"], dtype=np.uint8, count=n * h * w).reshape(n, 1, h, w)
    return (torch.from_numpy(u8.copy()).float() / 255.0).to(device)


# ---------------------------------------------------------------------------------------------
# Methods, each a callable batch -> logits (prediction of that batch), plus predict().
def bn_layers(m):
    return [mod for mod in m.modules() if isinstance(mod, nn.BatchNorm2d)]


def configure_batch_stats(m):
    """TENT/EATA's configure_model: train mode, BN without running statistics, only the BN
    affine parameters require gradients."""
    m.train()
    m.requires_grad_(False)
    params = []
    for bn in bn_layers(m):
        bn.track_running_stats = False
        bn.running_mean = None
        bn.running_var = None
        bn.weight.requires_grad_(True)
        bn.bias.requires_grad_(True)
        params += [bn.weight, bn.bias]
    return params


def optimizer(params, spec):
    """torch.optim from Attune's optimizer spec ({"name": "adam" | "sgd", ...}); TENT's Adam when
    the spec names none."""
    o = (spec or {}).get("optimizer") or {"name": "adam", "lr": 1e-3}
    if o["name"] == "sgd":
        return torch.optim.SGD(params, lr=o["lr"], momentum=o.get("momentum", 0.0),
                               nesterov=o.get("nesterov", False), weight_decay=o.get("weight_decay", 0.0))
    return torch.optim.Adam(params, lr=o["lr"], betas=(o.get("beta1", 0.9), o.get("beta2", 0.999)),
                            eps=o.get("eps", 1e-8), weight_decay=o.get("weight_decay", 0.0))


def entropy(logits):
    return -(logits.softmax(1) * logits.log_softmax(1)).sum(1)


class Source:
    def __init__(self, m, *_):
        self.m = m.eval()
        self.m.requires_grad_(False)

    @torch.no_grad()
    def __call__(self, x):
        return self.m(x)

    predict = __call__


class NormTest(Source):
    def __init__(self, m, *_):
        self.m = m
        configure_batch_stats(m)


class Tent:
    def __init__(self, m, classes, clean, batch, cfg):
        self.m = m
        self.opt = optimizer(configure_batch_stats(m), cfg)

    def __call__(self, x):
        out = self.m(x)
        loss = entropy(out).mean(0)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad()
        return out.detach()

    @torch.no_grad()
    def predict(self, x):
        return self.m(x)


class Eata:
    """Official EATA (Niu et al. 2022) step: filters, weights, Fisher regularizer, Adam."""

    def __init__(self, m, classes, clean, batch, cfg):
        self.m = m
        self.params = configure_batch_stats(m)
        self.e0 = cfg["e_margin"] * math.log(classes)
        self.d_margin = cfg["d_margin"]
        self.alpha = cfg["fisher_alpha"]
        self.probs_ema = None
        self.fishers = self.fisher(clean[: cfg["fisher_size"]], max(batch, 2)) if self.alpha > 0 else None
        self.opt = optimizer(self.params, cfg)

    def fisher(self, clean, batch):
        acc, batches = None, 0
        n = clean.shape[0]
        for s in range(0, n, batch):
            e = min(s + batch, n)
            if e - s < 2 and batches > 0:
                break  # as Attune: a trailing single sample has no batch statistics
            o = self.m(clean[s:e])
            F.cross_entropy(o, o.max(1)[1]).backward()
            g2 = [p.grad.detach() ** 2 for p in self.params]
            acc = g2 if acc is None else [a + g for a, g in zip(acc, g2)]
            for p in self.params:
                p.grad = None
            batches += 1
        return [(a / batches, p.detach().clone()) for a, p in zip(acc, self.params)]

    def __call__(self, x):
        out = self.m(x)
        ent = entropy(out)
        ids1 = torch.where(ent < self.e0)[0]
        ent = ent[ids1]
        kept = out[ids1].softmax(1).detach()
        if self.probs_ema is not None:
            cos = F.cosine_similarity(self.probs_ema.unsqueeze(0), kept, dim=1)
            ids2 = torch.where(cos.abs() < self.d_margin)[0]
            ent = ent[ids2]
            kept = kept[ids2]
        if kept.shape[0] > 0:
            mean = kept.mean(0)
            self.probs_ema = mean if self.probs_ema is None else 0.9 * self.probs_ema + 0.1 * mean
            coeff = 1 / torch.exp(ent.clone().detach() - self.e0)
            loss = (ent * coeff).mean(0)
            if self.fishers is not None:
                for p, (f, p0) in zip(self.params, self.fishers):
                    loss = loss + self.alpha * (f * (p - p0) ** 2).sum()
            loss.backward()
            self.opt.step()
        self.opt.zero_grad()
        return out.detach()

    @torch.no_grad()
    def predict(self, x):
        return self.m(x)


def tta_transform(x, hflip, gen):
    """CoTTA's test-time augmentation, per image, as batched tensor ops: the same chain and
    ranges as Attune's `methods/augment.rs` (clip, brightness, contrast towards the image mean,
    gamma, affine with edge padding, 5×5 Gaussian blur with reflect padding, flip, noise)."""
    n, c, h, w = x.shape
    dev = x.device

    def u(lo, hi):
        return (torch.rand(n, generator=gen) * (hi - lo) + lo).to(dev)

    b, con, gam = u(0.6, 1.4), u(0.7, 1.3), u(0.7, 1.3)
    ang = u(-15.0, 15.0) * math.pi / 180
    tx = torch.round(u(-round(w / 16), round(w / 16)))
    ty = torch.round(u(-round(h / 16), round(h / 16)))
    sc, sig = u(0.9, 1.1), u(0.001, 0.5)
    flip = (torch.rand(n, generator=gen) < 0.5).to(dev) & hflip
    v = lambda t: t.view(n, 1, 1, 1)
    a = (x.clamp(0, 1) * v(b)).clamp(0, 1)
    a = (v(con) * a + (1 - v(con)) * a.mean((1, 2, 3), keepdim=True)).clamp(0, 1) ** v(gam)
    # Inverse affine map around the centre, in align_corners=True normalized coordinates.
    cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
    cx, cy = (w - 1) / 2, (h - 1) / 2
    theta = torch.stack([
        torch.stack([cos, sin * cy / cx, -(cos * tx + sin * ty) / cx], 1),
        torch.stack([-sin * cx / cy, cos, -(-sin * tx + cos * ty) / cy], 1),
    ], 1)
    grid = F.affine_grid(theta, (n, c, h, w), align_corners=True)
    a = F.grid_sample(a, grid, mode="bilinear", padding_mode="border", align_corners=True)
    k = torch.exp(-(torch.arange(-2, 3, device=dev).float().view(1, 5) ** 2) / (2 * sig.view(n, 1) ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)
    a = F.pad(a.reshape(1, n * c, h, w), (2, 2, 2, 2), mode="reflect")
    a = F.conv2d(a, k.view(n * c, 1, 1, 5), groups=n * c)
    a = F.conv2d(a, k.view(n * c, 1, 5, 1), groups=n * c).view(n, c, h, w)
    a = torch.where(v(flip), a.flip(3), a)
    return (a + 0.005 * torch.randn(a.shape, generator=gen).to(dev)).clamp(0, 1)


def configure_all(m):
    """CoTTA's configure_model: train mode, BN on batch statistics, every parameter trained."""
    configure_batch_stats(m)
    m.requires_grad_(True)
    return m


class Cotta:
    """Official CoTTA (Wang et al. 2022) step: student, EMA teacher and frozen anchor, all on
    batch statistics; augmentation-averaged teacher target when the anchor is unsure (computed
    only then, as Attune does); soft cross-entropy; Adam on every weight; EMA; stochastic
    restore. Returns the teacher target."""

    def __init__(self, m, classes, clean, batch, cfg):
        import copy
        self.m = configure_all(m)
        self.teacher = copy.deepcopy(self.m).requires_grad_(False)
        self.anchor = copy.deepcopy(self.m).requires_grad_(False)
        self.source = {k: v.detach().clone() for k, v in self.m.named_parameters()}
        self.mt, self.rst, self.ap = cfg["mt"], cfg["rst"], cfg["ap"]
        self.n_aug, self.hflip = cfg["n_augmentations"], cfg["hflip"]
        self.gen = torch.Generator().manual_seed(0)
        self.opt = optimizer(self.m.parameters(), cfg)

    def __call__(self, x):
        out = self.m(x)
        with torch.no_grad():
            conf = self.anchor(x).softmax(1).max(1)[0].mean(0)
            if conf >= self.ap:
                target = self.teacher(x)
            else:
                target = sum(self.teacher(tta_transform(x, self.hflip, self.gen)) for _ in range(self.n_aug)) / self.n_aug
        loss = (-(target.softmax(1) * out.log_softmax(1)).sum(1)).mean(0)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad()
        with torch.no_grad():
            for t, s in zip(self.teacher.parameters(), self.m.parameters()):
                t.mul_(self.mt).add_(s, alpha=1 - self.mt)
            if self.rst > 0:
                for k, p in self.m.named_parameters():
                    mask = (torch.rand(p.shape, generator=self.gen) < self.rst).to(p.device)
                    p.copy_(torch.where(mask, self.source[k], p))
        return target

    @torch.no_grad()
    def predict(self, x):
        return self.teacher(x)


METHODS = {"source": Source, "norm_test": NormTest, "tent": Tent, "eata": Eata, "cotta": Cotta}


# ---------------------------------------------------------------------------------------------
class Bench:
    def __init__(self, threads, device):
        torch.set_num_threads(threads)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass
        torch.manual_seed(0)
        self.device = torch.device(device)
        self.models = {}

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def hello(self, _):
        return {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "device": str(self.device),
            "mkldnn": bool(torch.backends.mkldnn.is_available()),
        }

    def matmul(self, req):
        n, reps = req.get("n", 1024), req.get("repeats", 5)
        a = torch.randn(n, n, device=self.device)
        b = torch.randn(n, n, device=self.device)
        c = a @ b
        rates = []
        for _ in range(reps):
            self.sync()
            t = time.perf_counter()
            c = torch.mm(a, b, out=c)
            self.sync()
            rates.append(2 * n ** 3 / (time.perf_counter() - t) / 1e9)
        return {"gflops": statistics.median(rates), "all": rates}

    def load(self, req):
        self.models[req["name"]] = {
            "spec": req,
            "stream": images(req["stream"], self.device),
            "clean": images(req["clean"], self.device),
        }
        return {"ok": True}

    def method(self, req):
        ent = self.models[req["model"]]
        m = build(ent["spec"], self.device)
        return METHODS[req["method"]](m, ent["spec"]["classes"], ent["clean"], req["batch"], req.get("spec") or {})

    @staticmethod
    def batches(stream, batch):
        nb = stream.shape[0] // batch
        return [stream[i * batch:(i + 1) * batch].contiguous() for i in range(nb)]

    def bench(self, req):
        ent = self.models[req["model"]]
        xs = self.batches(ent["stream"], req["batch"])
        step = self.method(req)
        k = req["batches_per_repeat"]
        i = 0
        for _ in range(req.get("warmup", 1) * k):
            step(xs[i % len(xs)])
            i += 1
        rates = []
        for _ in range(req["repeats"]):
            self.sync()
            t = time.perf_counter()
            for _ in range(k):
                step(xs[i % len(xs)])
                i += 1
            self.sync()
            rates.append(k * req["batch"] / (time.perf_counter() - t))
        return {"ips": rates}

    def parity(self, req):
        ent = self.models[req["model"]]
        xs = self.batches(ent["stream"], req["batch"])
        if len(xs) < req["batches"]:
            raise SystemExit(f"stream too short for {req['batches']} batches of {req['batch']}")
        step = self.method(req)
        outs = [step(xs[i]) for i in range(req["batches"])]
        outs.append(step.predict(xs[0]))
        np.concatenate([o.float().cpu().numpy().reshape(-1) for o in outs]).astype("<f4").tofile(req["out"])
        return {"ok": True}


def main():
    threads = int(sys.argv[sys.argv.index("--threads") + 1]) if "--threads" in sys.argv else 2
    device = sys.argv[sys.argv.index("--device") + 1] if "--device" in sys.argv else "cpu"
    b = Bench(threads, device)
    for line in sys.stdin:
        req = json.loads(line)
        cmd = req["cmd"]
        if cmd == "quit":
            break
        try:
            ans = getattr(b, cmd)(req)
        except Exception as e:  # report, keep serving
            ans = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(ans), flush=True)


if __name__ == "__main__":
    main()

"""PyTorch's inference throughput on the CPU, and the ONNX export oodkit runs (issue 37).

Usage: python torch_throughput.py NETWORK THREADS OUT.onnx [WEIGHTS.safetensors]
  NETWORK: resnet20 (CIFAR, 3x32x32, the akamaster layout of ../shared/peer, WEIGHTS given)
           or resnet50 (torchvision, 3x224x224, random weights, seed 0)
Exports the network with torch.onnx.export's defaults (the dynamo exporter, weights in
OUT.onnx.data) and a dynamic batch axis, then prints one JSON line: images/s at each batch
size (median of 5 timed runs after 2 warm-ups, torch.no_grad, THREADS threads).
"""
import json, os, statistics, sys, time, types
import torch

network, threads, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
torch.set_num_threads(threads)
torch.manual_seed(0)

if network == "resnet20":
    from safetensors.torch import load_file
    here = os.path.dirname(os.path.abspath(__file__))
    peer = os.environ.get("PEER", os.path.join(here, "..", "..", "..", "shared", "peer"))
    src = open(os.path.join(peer, "resnet20_torch_bench.py")).read()
    mod = types.ModuleType("resnet20")
    exec(src.split("weights, threads = sys.argv[1]")[0], mod.__dict__)
    net = mod.ResNet(3)
    net.load_state_dict(load_file(sys.argv[4]), strict=False)
    shape, batches = (3, 32, 32), (128, 500)
elif network == "resnet50":
    import torchvision
    net = torchvision.models.resnet50(weights=None)
    shape, batches = (3, 224, 224), (16, 64)
else:
    sys.exit(f"unknown network {network!r}: resnet20 or resnet50")
net.eval()

if not os.path.exists(out):
    torch.onnx.export(net, (torch.randn(2, *shape),), out, input_names=["input"],
                      output_names=["logits"], dynamic_shapes={"x": {0: torch.export.Dim("batch")}})

result = {"network": network, "threads": threads, "torch": torch.__version__, "onnx": out}
with torch.no_grad():
    for batch in batches:
        x = torch.randn(batch, *shape)
        for _ in range(2):
            net(x)
        times = []
        for _ in range(5):
            t = time.perf_counter()
            net(x)
            times.append(time.perf_counter() - t)
        result[f"img_s_batch{batch}"] = round(batch / statistics.median(times), 1)
print(json.dumps(result))

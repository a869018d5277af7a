"""PNG folders for the own-model benchmark (issue 37's job), from the shared data sets.

Usage: python make_data.py DATA_ROOT OUT_DIR

OUT_DIR/fit/<class>/     5 000 CIFAR-10 test images (the even records: every class)
OUT_DIR/id/<class>/      the other 5 000 (odd records)
OUT_DIR/ood/             the first 5 000 MNIST test digits, as 32x32 RGB (resized once
                         here with PIL bilinear, so both pipelines read the same pixels)
Needs numpy and Pillow (the PyTorch peer environment has both).
"""
import gzip, os, sys
import numpy as np
from PIL import Image

root, out = sys.argv[1], sys.argv[2]
records = np.fromfile(os.path.join(root, "cifar10/cifar-10-batches-bin/test_batch.bin"), dtype=np.uint8)
records = records.reshape(10000, 3073)
classes = open(os.path.join(root, "cifar10/cifar-10-batches-bin/batches.meta.txt")).read().split()
for i, rec in enumerate(records):
    split = "fit" if i % 2 == 0 else "id"
    label = int(rec[0])
    folder = os.path.join(out, split, f"{label}_{classes[label]}")
    os.makedirs(folder, exist_ok=True)
    img = rec[1:].reshape(3, 32, 32).transpose(1, 2, 0)
    Image.fromarray(img).save(os.path.join(folder, f"{i:05d}.png"))
with gzip.open(os.path.join(root, "mnist/t10k-images-idx3-ubyte.gz")) as f:
    digits = np.frombuffer(f.read()[16:], dtype=np.uint8).reshape(-1, 28, 28)
os.makedirs(os.path.join(out, "ood"), exist_ok=True)
for i, d in enumerate(digits[:5000]):
    Image.fromarray(d).resize((32, 32), Image.BILINEAR).convert("RGB").save(
        os.path.join(out, "ood", f"{i:05d}.png"))
print(f"wrote {out}/fit, {out}/id (5 000 CIFAR-10 each), {out}/ood (5 000 MNIST)")

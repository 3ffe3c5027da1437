"""Experiment: does running the compiled view function on L2-sized chunks of views beat one call?"""
import torch
from con2.data.contexts import ContextSet
from con2.data import views as V

size, n = 224, 512
dev = torch.device("cuda")
x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, device=dev)
cfg = V.ViewConfig(size)
pipe = V.TensorViewPipeline(ContextSet("invert"), cfg)
both = pipe.context_images(x).view(2, 1, n, 3, size, size).expand(-1, 2, -1, -1, -1, -1).reshape(-1, 3, size, size)
m = both.shape[0]
params = V.sample_view_params(m, size, size, cfg, torch.Generator(dev).manual_seed(0), dev)
fn = V._compiled_views(cfg, torch.bfloat16, True)
ref = fn(both, params.boxes, params.hflip, params.factors, params.order, params.gray)

def run(chunk):
    if chunk >= m:
        return fn(both, params.boxes, params.hflip, params.factors, params.order, params.gray)
    out = torch.empty((m, 3, size, size), dtype=torch.bfloat16, device=dev).contiguous(memory_format=torch.channels_last)
    for i in range(0, m, chunk):
        p = params[i : i + chunk]
        out[i:i + chunk] = fn(both[i:i + chunk], p.boxes, p.hflip, p.factors, p.order, p.gray)
    return out

for chunk in [2048, 512, 128, 64, 32]:
    o = run(chunk)
    assert (o.float() - ref.float()).abs().max() < 1e-2
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(True), torch.cuda.Event(True)
    ts = []
    for _ in range(10):
        s.record(); run(chunk); e.record(); torch.cuda.synchronize(); ts.append(s.elapsed_time(e))
    ts.sort()
    print(f"chunk {chunk:5d}: {ts[len(ts)//2]:.3f} ms", flush=True)

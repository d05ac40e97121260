"""The tables and the Figure-5-style PNG of docs/REPRODUCTION.md, from whatever cell JSONs exist
under docs/reproduction/ (called by `tools/reproduce.py report`). The tables go between the
`<!-- tables:begin -->` / `<!-- tables:end -->` markers of docs/REPRODUCTION.md; the prose around
them is written by hand and not touched."""
import json
import statistics
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "REPRODUCTION.md"
OUT = ROOT / "docs" / "reproduction"
FIG = OUT / "mask_ratio.png"


def load(out_json):
    cells = {}
    for p in sorted(out_json.glob("*.json")):
        c = json.loads(p.read_text())
        if "cell" in c:  # not tools/bench/table2.py's table2_*.json
            cells[c["cell"]] = c
    return cells


def last(c, stage, key="test_acc1"):
    s = c.get(stage)
    return s[key][-1] if s and s.get(key) else None


def fmt(x, nd=2):
    return "—" if x is None else f"{x:.{nd}f}"


def mean_sd(xs):
    xs = [x for x in xs if x is not None]
    if not xs:
        return "—"
    if len(xs) == 1:
        return f"{xs[0]:.2f} (1 seed)"
    return f"{statistics.mean(xs):.2f} ± {statistics.stdev(xs):.2f} ({len(xs)} seeds: {', '.join(f'{x:.2f}' for x in xs)})"


def plain(c):
    """A cell of the first four experiments: the recipe with no ablation option."""
    return not c.get("pretrain_flags") and c.get("pretrain_epochs", 8) == 8 and not c.get("partial_blocks")


def row(c):
    return (fmt(last(c, "finetune")), fmt(last(c, "linprobe")),
            fmt(c["pretrain"]["train_loss"][-1], 4) if c.get("pretrain") else "—")


def tables(cells, reruns=()):
    """The markdown of sections 1-11; `reruns` are control cells, kept to their own table."""
    out = []
    every = cells
    cells = {k: c for k, c in cells.items() if plain(c)}
    rust = {k: c for k, c in cells.items() if c["impl"] == "rust"}

    def pick(impl, kind, seed=0, mask=0.75, pix=True, dec1=False):
        for c in cells.values():
            if (c["impl"], c["kind"], c["seed"]) != (impl, kind, seed):
                continue
            if kind == "scratch":
                return c
            if abs(c["mask_ratio"] - mask) < 1e-9 and c["norm_pix_loss"] == pix and \
                    c["model"].endswith("d1b") == dec1:
                return c
        return None

    out.append("### 1. Masking ratio (paper: Figure 5)\n")
    out.append("| mask ratio | fine-tune top-1 | linear probe top-1 | final pre-training loss |")
    out.append("|---|---|---|---|")
    for m in sorted({c["mask_ratio"] for c in rust.values() if c["kind"] == "mae"}):
        c = pick("rust", "mae", mask=m)
        if c:
            out.append(f"| {m:.2f} | " + " | ".join(seeds_row(every, c)) + " |")
    out.append("\nPaper (ViT-L, ImageNet, 800 epochs): fine-tuning is flat from 40 % to 80 % and best "
               "there; linear probing rises steadily up to 75 % (73.5 %) and drops after.\n")

    out.append("### 2. Reconstruction target (paper: Table 1(d))\n")
    out.append("| target | fine-tune top-1 | linear probe top-1 | paper ft | paper lin |")
    out.append("|---|---|---|---|---|")
    for pix, name, pft, plin in [(False, "pixels (no norm)", "84.9", "73.5"),
                                 (True, "pixels, `--norm_pix_loss`", "85.4", "73.9")]:
        c = pick("rust", "mae", pix=pix)
        r = seeds_row(every, c) if c else ("—", "—", "—")
        out.append(f"| {name} | {r[0]} | {r[1]} | {pft} | {plin} |")
    out.append("")

    out.append("### 3. Decoder depth (paper: Table 1(a))\n")
    out.append("| decoder blocks | fine-tune top-1 | linear probe top-1 | paper ft | paper lin |")
    out.append("|---|---|---|---|---|")
    for dec1, name, pft, plin in [(True, "1", "84.8", "65.5"), (False, "4 (the mini's; paper: 8)", "84.9", "73.5")]:
        c = pick("rust", "mae", dec1=dec1)
        r = seeds_row(every, c) if c else ("—", "—", "—")
        out.append(f"| {name} | {r[0]} | {r[1]} | {pft} | {plin} |")
    out.append("")

    out.append("### 4. Pre-training against from scratch (paper: §4, ViT-L: scratch 82.5, MAE 84.9)\n")
    out.append("| init | implementation | fine-tune top-1, mean ± sd over seeds |")
    out.append("|---|---|---|")
    for impl in ["rust", "torch"]:
        for kind, name in [("mae", "MAE (mask 0.75)"), ("scratch", "random (scratch)")]:
            xs = [last(c, "finetune") for c in cells.values()
                  if c["impl"] == impl and c["kind"] == kind and (kind == "scratch" or
                  (abs(c["mask_ratio"] - 0.75) < 1e-9 and c["norm_pix_loss"] and not c["model"].endswith("d1b")))]
            out.append(f"| {name} | {'Rust (`mae`)' if impl == 'rust' else 'PyTorch'} | {mean_sd(xs)} |")
    out.append("")

    out.append("### 5. Rust against PyTorch, the same recipe (mask 0.75, `--norm_pix_loss`)\n")
    out.append("| implementation | seed | pre-training loss per epoch | fine-tune top-1 per epoch | linear probe top-1 per epoch | wall (pre-train / ft / lp) |")
    out.append("|---|---|---|---|---|---|")
    for impl in ["rust", "torch"]:
        for seed in [0, 1, 2]:
            c = pick(impl, "mae", seed=seed)
            if not c:
                continue
            pl = ", ".join(f"{x:.3f}" for x in c["pretrain"]["train_loss"])
            ft = ", ".join(f"{x:.2f}" for x in c["finetune"]["test_acc1"])
            lp = ", ".join(f"{x:.2f}" for x in c["linprobe"]["test_acc1"])
            wall = " / ".join(f"{c[s]['wall_s'] / 60:.0f}" for s in ["pretrain", "finetune", "linprobe"]) + " min"
            out.append(f"| {'Rust' if impl == 'rust' else 'PyTorch'} | {seed} | {pl} | {ft} | {lp} | {wall} |")
    out.append("")
    for stage, name in [("finetune", "fine-tune"), ("linprobe", "linear probe")]:
        for impl in ["rust", "torch"]:
            xs = [last(c, stage) for c in cells.values() if c["impl"] == impl and c["kind"] == "mae"
                  and abs(c["mask_ratio"] - 0.75) < 1e-9 and c["norm_pix_loss"] and not c["model"].endswith("d1b")]
            out.append(f"- {name}, {'Rust' if impl == 'rust' else 'PyTorch'}: {mean_sd(xs)}")
    out.append("")
    out.extend(machine_table(reruns, every))
    out.extend(ablations(every, pick("rust", "mae")))
    present = sorted(list(every) + [r["cell"] for r in reruns])
    out.append("Cells present: " + ", ".join(f"`{k}`" for k in present) + ".")
    return "\n".join(out)


def largest_gap(a, b):
    """The largest difference between two runs' per-iteration pre-training losses."""
    return max((abs(x - y) for x, y in zip(a, b)), default=None)


def machine_table(reruns, cells):
    """A cell run again, same recipe and seed, on another CPU: how much the machine alone moves it."""
    if not reruns:
        return []
    out = ["The same cell on two CPUs (same recipe, flags and seed; fp32; one thread each):\n",
           "| cell | CPU | fine-tune top-1 | linear probe top-1 | final pre-training loss | "
           "largest difference in pre-training loss, any iteration (stored to 5 decimals) |",
           "|---|---|---|---|---|---|"]
    for r in reruns:
        o = cells.get(r["rerun"])
        if o is None:
            continue
        gap = largest_gap(o["pretrain"].get("iter_loss", []), r["pretrain"].get("iter_loss", []))
        for c, same in [(o, "—"), (r, "—" if gap is None else f"{gap:.1e} ({len(r['pretrain']['iter_loss'])} iterations)")]:
            out.append(f"| `{c['cell']}` | {c.get('cpu', '—')} | " + " | ".join(row(c)) + f" | {same} |")
    out.append("")
    return out


def flagged(cells, flags, mask=0.75, epochs=8):
    for c in cells.values():
        if c["impl"] == "rust" and c["kind"] == "mae" and c["seed"] == 0 and c.get("pretrain_flags", []) == flags \
                and abs(c["mask_ratio"] - mask) < 1e-9 and c.get("pretrain_epochs", 8) == epochs \
                and not c.get("partial_blocks") and c["model"] == "mae_vit_mini_patch4" and c["norm_pix_loss"]:
            return c
    return None


def same_recipe(a, b):
    """a and b differ at most in their seed."""
    keys = ("impl", "kind", "mask_ratio", "norm_pix_loss", "model", "pretrain_flags", "pretrain_epochs",
            "partial_blocks")
    # older cells lack the later fields: those read as empty, or as the recipe's 8 epochs
    default = {"pretrain_epochs": 8}
    return all((a.get(k) or default.get(k)) == (b.get(k) or default.get(k)) for k in keys)


def seeds_row(cells, c):
    """row(c), or with second seeds present: each seed's value in seed order, then their mean."""
    sibs = sorted((x for x in cells.values() if same_recipe(x, c)), key=lambda x: x["seed"])
    if len(sibs) < 2:
        return row(c)
    cols = []
    for stage in ("finetune", "linprobe"):
        xs = [last(x, stage) for x in sibs]
        done = [x for x in xs if x is not None]
        cols.append(" / ".join(fmt(x) for x in xs) + (f" (mean {statistics.mean(done):.2f})" if len(done) > 1 else ""))
    losses = [x["pretrain"]["train_loss"][-1] if x.get("pretrain") else None for x in sibs]
    cols.append(" / ".join(fmt(x, 4) for x in losses))
    return tuple(cols)


def seed_mean(cells, c, stage):
    """The mean over c's seeds (cells of the same recipe) of the stage's final top-1."""
    xs = [last(x, stage) for x in cells.values() if same_recipe(x, c)]
    xs = [x for x in xs if x is not None]
    return statistics.mean(xs) if xs else None


def ablations(cells, central):
    """Sections 6-11: the options of `mae` that the official code does not have."""
    out = ["Sections 6-11: seed 0, unless a cell shows several values (seed 0 / seed 1, then their mean).\n"]

    def table(title, head, rows):
        out.append(f"### {title}\n")
        out.append(f"| {head} | fine-tune top-1 | linear probe top-1 | final pre-training loss | paper ft | paper lin |")
        out.append("|---|---|---|---|---|---|")
        for name, c, pft, plin in rows:
            r = seeds_row(cells, c) if c else ("not run yet", "—", "—")
            out.append(f"| {name} | {r[0]} | {r[1]} | {r[2]} | {pft} | {plin} |")
        out.append("")

    table("6. Mask token in the encoder (paper: Table 1(c); FLOPs ratio 3.3×)", "encoder", [
        ("w/ [M] (`--encoder_mask_token`)", flagged(cells, ["--encoder_mask_token"]), "84.2", "59.6"),
        ("w/o [M] (the official)", central, "84.9", "73.5")])
    table("7. Mask sampling (paper: Table 1(f), Figure 6)", "sampling", [
        ("random 75 %", central, "84.9", "73.5"),
        ("block 50 %", flagged(cells, ["--mask_sampling", "block"], mask=0.5), "83.9", "72.3"),
        ("block 75 %", flagged(cells, ["--mask_sampling", "block"]), "82.8", "63.9"),
        ("grid 75 %", flagged(cells, ["--mask_sampling", "grid"]), "84.0", "66.0")])
    table("8. Decoder width (paper: Table 1(b), 128 … 1024 wide for ViT-L)", "decoder width (× the default)", [
        ("32 (½×)", flagged(cells, ["--decoder_embed_dim", "32"]), "84.8", "71.3"),
        ("64 (1×, the mini's)", central, "84.9", "73.5"),
        ("128 (2×)", flagged(cells, ["--decoder_embed_dim", "128"]), "84.3", "73.1"),
        ("256 (4×)", flagged(cells, ["--decoder_embed_dim", "256"]), "—", "—")])
    out.append("The paper's columns are its width at the same ratio to its default (ViT-L's 512): 256, 512 "
               "and 1024. Its whole row, 128 / 256 / 512 / 768 / 1024 wide: ft 84.9 / 84.8 / 84.9 / 84.4 / "
               "84.3, lin 69.1 / 71.3 / 73.5 / 73.1 / 73.1.\n")
    table("9. Pre-training augmentation (paper: Table 1(e))", "augmentation", [
        ("none (center crop)", flagged(cells, ["--pretrain_aug", "none"]), "84.0", "65.7"),
        ("crop, fixed size", flagged(cells, ["--pretrain_aug", "crop_fixed"]), "84.7", "73.1"),
        ("crop, random size (the official)", central, "84.9", "73.5"),
        ("crop + color jitter", flagged(cells, ["--pretrain_aug", "crop_color"]), "84.3", "71.9")])
    table("10. Pre-training length (paper: Figure 7, both still rising at 1600 epochs)", "epochs", [
        ("8", central, "—", "—"),
        ("16", flagged(cells, [], epochs=16), "—", "—"),
        ("32", flagged(cells, [], epochs=32), "—", "—")])
    part = next((c for c in cells.values() if c.get("partial_blocks")), None)
    out.append("### 11. Partial fine-tuning (paper: Figure 9, ViT-L: 73.5 linear, 81.0 with one block, 84.9 full)\n")
    out.append("| blocks fine-tuned | top-1 |")
    out.append("|---|---|")
    out.append(f"| linear probe | {fmt(last(part, 'linprobe')) if part else 'not run yet'} |")
    for k in (part or {}).get("partial_blocks", [0, 1, 2, 3]):
        out.append(f"| {k} | {fmt(last(part, f'finetune_partial{k}')) if part else 'not run yet'} |")
    out.append(f"| 6 (all) | {fmt(last(part, 'finetune')) if part else 'not run yet'} |")
    out.append("")
    return out


def figure(cells):
    cells = {k: c for k, c in cells.items() if plain(c)}
    pts = sorted((c["mask_ratio"], last(c, "finetune"), last(c, "linprobe")) for c in cells.values()
                 if c["impl"] == "rust" and c["kind"] == "mae" and c["seed"] == 0 and c["norm_pix_loss"]
                 and not c["model"].endswith("d1b"))
    torch_pts = [(c["mask_ratio"], last(c, "finetune"), last(c, "linprobe")) for c in cells.values()
                 if c["impl"] == "torch" and c["kind"] == "mae"]
    other_seeds = [(c["mask_ratio"], last(c, "finetune"), last(c, "linprobe")) for c in cells.values()
                   if c["impl"] == "rust" and c["kind"] == "mae" and c["seed"] != 0 and c["norm_pix_loss"]
                   and not c["model"].endswith("d1b")]
    if not pts:
        return False
    W, H = 900, 420
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    try:
        font = ImageFont.load_default(size=14)
    except TypeError:
        font = ImageFont.load_default()
    panels = [("fine-tuning top-1 (%)", 1, (40, 40, 160)), ("linear probing top-1 (%)", 2, (160, 40, 40))]
    for k, (title, idx, color) in enumerate(panels):
        x0, y0, pw, ph = 70 + k * 440, 40, 360, 300
        ys = [p[idx] for p in pts + torch_pts + other_seeds if p[idx] is not None]
        if not ys:
            continue
        lo, hi = min(ys), max(ys)
        pad = max(1.0, (hi - lo) * 0.15)
        lo, hi = lo - pad, hi + pad
        X = lambda m: x0 + m * pw  # noqa: E731
        Y = lambda v: y0 + ph - (v - lo) / (hi - lo) * ph  # noqa: E731
        d.rectangle([x0, y0, x0 + pw, y0 + ph], outline="black")
        for m in [0, 0.25, 0.5, 0.75, 1.0]:
            d.line([X(m), y0 + ph, X(m), y0 + ph + 5], fill="black")
            d.text((X(m) - 12, y0 + ph + 8), f"{int(m * 100)}", fill="black", font=font)
        for t in range(5):
            v = lo + (hi - lo) * t / 4
            d.line([x0 - 5, Y(v), x0, Y(v)], fill="black")
            d.text((x0 - 45, Y(v) - 7), f"{v:.1f}", fill="black", font=font)
        d.text((x0 + 90, y0 + ph + 26), "masking ratio (%)", fill="black", font=font)
        d.text((x0 + 70, y0 - 24), title, fill="black", font=font)
        line = [(X(p[0]), Y(p[idx])) for p in pts if p[idx] is not None]
        if len(line) > 1:
            d.line(line, fill=color, width=2)
        for (x, y), p in zip(line, [p for p in pts if p[idx] is not None]):
            d.ellipse([x - 4, y - 4, x + 4, y + 4], fill=color)
            d.text((x + 5, y - 18), f"{p[idx]:.1f}", fill=color, font=font)
        for p in torch_pts:
            if p[idx] is not None:
                x, y = X(p[0]), Y(p[idx])
                d.rectangle([x - 4, y - 4, x + 4, y + 4], outline=(0, 130, 0), width=2)
        for p in other_seeds:
            if p[idx] is not None:
                x, y = X(p[0]), Y(p[idx])
                d.ellipse([x - 4, y - 4, x + 4, y + 4], outline=color, width=2)
    d.text((70, H - 22), "dots: mae (Rust), seed 0 (rings: other seeds); green squares: the PyTorch reference. "
           "Fashion-MNIST, mini ViT, 10 000 train images.", fill="black", font=font)
    FIG.parent.mkdir(parents=True, exist_ok=True)
    img.save(FIG)
    return True


def curve_png(path, title, xlabel, series, xs_labels):
    """A small line plot: `series` is [(name, color, [(x, y or None)])], x in 0..len(xs_labels)-1."""
    W, H = 520, 380
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    try:
        font = ImageFont.load_default(size=14)
    except TypeError:
        font = ImageFont.load_default()
    ys = [y for _, _, pts in series for _, y in pts if y is not None]
    if not ys:
        return False
    lo, hi = min(ys), max(ys)
    pad = max(1.0, (hi - lo) * 0.15)
    lo, hi = lo - pad, hi + pad
    x0, y0, pw, ph = 70, 40, 420, 270
    n = max(1, len(xs_labels) - 1)
    X = lambda i: x0 + i / n * pw  # noqa: E731
    Y = lambda v: y0 + ph - (v - lo) / (hi - lo) * ph  # noqa: E731
    d.rectangle([x0, y0, x0 + pw, y0 + ph], outline="black")
    for i, lab in enumerate(xs_labels):
        d.line([X(i), y0 + ph, X(i), y0 + ph + 5], fill="black")
        d.text((X(i) - 10, y0 + ph + 8), str(lab), fill="black", font=font)
    for t in range(5):
        v = lo + (hi - lo) * t / 4
        d.line([x0 - 5, Y(v), x0, Y(v)], fill="black")
        d.text((x0 - 45, Y(v) - 7), f"{v:.1f}", fill="black", font=font)
    d.text((x0 + pw / 2 - 60, y0 + ph + 26), xlabel, fill="black", font=font)
    d.text((x0, 12), title, fill="black", font=font)
    for k, (name, color, pts) in enumerate(series):
        line = [(X(x), Y(y)) for x, y in pts if y is not None]
        if len(line) > 1:
            d.line(line, fill=color, width=2)
        for (px, py), (_, y) in zip(line, [p for p in pts if p[1] is not None]):
            d.ellipse([px - 4, py - 4, px + 4, py + 4], fill=color)
            lx = px + 5 if px < x0 + pw - 40 else px - 40  # the last point's label inside the frame
            d.text((lx, py - 18), f"{y:.1f}", fill=color, font=font)
        d.line([(x0 + 10 + 170 * k, H - 14), (x0 + 24 + 170 * k, H - 14)], fill=color, width=2)
        d.text((x0 + 28 + 170 * k, H - 22), name, fill=color, font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return True


def ablation_figures(cells):
    """Figure 7 (schedule) and Figure 9 (partial fine-tuning) from the cells, Figure 6 (masks and
    reconstructions of each sampling by its own model) from their checkpoints when present."""
    made = []
    sched = [flagged(cells, [], epochs=e) for e in (8, 16, 32)]
    if sum(c is not None for c in sched) > 1:
        series = [(name, color, [(i, seed_mean(cells, c, stage) if c else None) for i, c in enumerate(sched)])
                  for name, stage, color in [("fine-tuning", "finetune", (40, 40, 160)),
                                             ("linear probing", "linprobe", (160, 40, 40))]]
        if curve_png(OUT / "schedule.png", "top-1 (%) against pre-training epochs, mean of the seeds (Figure 7)", "epochs",
                     series, [8, 16, 32]):
            made.append("schedule.png")
    part = next((c for c in cells.values() if c.get("partial_blocks")), None)
    if part:
        ks = part["partial_blocks"]
        pts = [(0, last(part, "linprobe"))] + [(i + 1, last(part, f"finetune_partial{k}")) for i, k in enumerate(ks)]
        pts.append((len(ks) + 1, last(part, "finetune")))
        if curve_png(OUT / "partial.png", "top-1 (%) against blocks fine-tuned (Figure 9)", "blocks fine-tuned",
                     [("mae, mini ViT", (40, 40, 160), pts)], ["lin"] + ks + [6]):
            made.append("partial.png")
    # Figure 6: the first Fashion-MNIST test images, each sampling by its own model
    mae = ROOT / "target" / "release" / "mae"
    work = ROOT / "target" / "reproduction"
    rows = [("random 75 %", "rust_mask0.75_partial_seed0", "random"),
            ("block 75 %", "rust_mask0.75_block_seed0", "block"),
            ("grid 75 %", "rust_mask0.75_grid_seed0", "grid")]
    ckpts = [(label, work / cell / "pretrain" / "checkpoint-7.pth", s) for label, cell, s in rows]
    if mae.exists() and all(p.exists() for _, p, _ in ckpts):
        import subprocess
        import tempfile
        strips = []
        with tempfile.TemporaryDirectory() as tmp:
            for label, ck, sampling in ckpts:
                png = Path(tmp) / f"{sampling}.png"
                subprocess.run([str(mae), "visualize", "--checkpoint", str(ck), "--mask_sampling", sampling,
                                "--device", "cpu", "--out", str(png)], check=True, capture_output=True)
                strips.append((label, Image.open(png).convert("RGB")))
        w = max(im.width for _, im in strips)
        fig = Image.new("RGB", (w, sum(im.height + 24 for _, im in strips)), "white")
        d = ImageDraw.Draw(fig)
        y = 0
        for label, im in strips:
            d.text((8, y + 4), f"{label} sampling, reconstructed by the model pre-trained with it",
                   fill="black", font=ImageFont.load_default())
            fig.paste(im, (0, y + 24))
            y += im.height + 24
        fig.save(OUT / "mask_sampling.png")
        made.append("mask_sampling.png")
    return made


def report(out_json, _cells, _recipe):
    cells = load(out_json)
    reruns = [c for c in cells.values() if c.get("rerun")]
    main = {k: c for k, c in cells.items() if not c.get("rerun")}  # controls stay in their table
    text = tables(main, reruns)
    has_fig = figure(main)
    made = ablation_figures(main)
    if made:
        print("wrote " + ", ".join(f"docs/reproduction/{m}" for m in made))
    doc = DOC.read_text() if DOC.exists() else "<!-- tables:begin -->\n<!-- tables:end -->\n"
    a, b = "<!-- tables:begin -->", "<!-- tables:end -->"
    if a not in doc or b not in doc:
        raise SystemExit(f"{DOC} lacks the {a} / {b} markers")
    head, rest = doc.split(a, 1)
    _, tail = rest.split(b, 1)
    DOC.write_text(head + a + "\n" + text + "\n" + b + tail)
    print(f"wrote {DOC.relative_to(ROOT)} ({len(cells)} cells)" + (f" and {FIG.relative_to(ROOT)}" if has_fig else ""))

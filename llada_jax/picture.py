"""Pictures of the denoising order (the paper's Table 4): each generated token shaded by the step at which it was
committed, light = early, dark = late. HTML needs nothing; PNG needs matplotlib.

rows: [(prompt text, [(token text, step), ...]), ...]; step -1 = never committed (still [MASK]).
"""
import html

from llada_jax.errors import LladaError


def _shade(step, last):
    """Light blue (step 0) to dark blue (the last step); grey for never committed."""
    if step < 0:
        return (0.85, 0.85, 0.85)
    f = step / last if last > 0 else 0.0
    light, dark = (0.87, 0.93, 1.0), (0.03, 0.19, 0.42)
    return tuple(a + (b - a) * f for a, b in zip(light, dark))


def _last_step(rows):
    return max([s for _, toks in rows for _, s in toks] + [0])


def write_html(rows, path, title="Denoising order"):
    last = _last_step(rows)
    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:monospace;margin:2em} .p{color:#555} span.t{padding:2px 1px;margin:1px;"
             "border-radius:3px;display:inline-block;white-space:pre}</style>",
             f"<h3>{html.escape(title)}</h3><p>Each generated token is shaded by the step at which it was committed: "
             f"light = step 0, dark = step {last}; grey = never committed. Hover for the step.</p>"]
    for prompt, toks in rows:
        spans = []
        for text, step in toks:
            r, g, b = (int(255 * c) for c in _shade(step, last))
            fg = "#fff" if step >= 0 and last and step / last > 0.55 else "#000"
            spans.append(f"<span class='t' title='step {step}' style='background:rgb({r},{g},{b});color:{fg}'>"
                         f"{html.escape(text) or '&nbsp;'}</span>")
        parts.append(f"<p><span class='p'>{html.escape(prompt)}</span><br>{''.join(spans)}</p>")
    with open(path, "w") as f:
        f.write("\n".join(parts) + "\n")


def write_png(rows, path, per_line=32, title="Denoising order"):
    import matplotlib  # lazily: ~1 s to import, and only .png pictures need it
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    last = _last_step(rows)
    lines = []  # (label, [(text, step)])
    for prompt, toks in rows:
        for i in range(0, max(len(toks), 1), per_line):
            lines.append((prompt if i == 0 else "", toks[i:i + per_line]))
    fig, ax = plt.subplots(figsize=(max(6, 0.42 * per_line + 3), 0.5 * len(lines) + 1))
    for y, (label, toks) in enumerate(lines):
        ax.text(-0.2, -y, label[-24:], ha="right", va="center", fontsize=8, color="#555", family="monospace")
        for x, (text, step) in enumerate(toks):
            ax.add_patch(plt.Rectangle((x, -y - 0.4), 0.95, 0.8, color=_shade(step, last)))
            dark = step >= 0 and last and step / last > 0.55
            ax.text(x + 0.47, -y, text.replace("\n", "\\n")[:3], ha="center", va="center", fontsize=8,
                    family="monospace", color="white" if dark else "black")
    ax.set_xlim(-0.2, per_line)
    ax.set_ylim(-len(lines) + 0.4, 0.6)
    ax.axis("off")
    ax.set_title(f"{title}: light = step 0, dark = step {last}")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def write(rows, path):
    """HTML or PNG by the file extension."""
    if path.endswith(".png"):
        write_png(rows, path)
    elif path.endswith((".html", ".htm")):
        write_html(rows, path)
    else:
        raise LladaError(f"--order_picture={path}: expected a .html or .png file name.")

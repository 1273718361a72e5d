"""Procedural 2.5-D scene of one location: a heightmap with lit top colours and facade colours.

The scene is a square grid of N x N cells (CELL metres each) centred on the target building; x points
east, y north, and grid row 0 is the northern edge, so the top map is already north-up (the satellite
tile is its central square).
Everything a renderer needs is baked per cell: height, lit top colour (ground/roofs, cast shadows
included), facade albedo and how much sun each facade cell gets, plus a small per-building table
(pose, window rhythm) so facades can draw floors and windows at the exact hit point.

Cues shared across views are deliberate: building styles couple roof and facade colours (as real
materials do), styles also set floor height, window rhythm and typical height (height -> shadow length
on the satellite tile, floor count on the street), and the target near the centre is a distinctive
composite of 1-3 boxes of one style.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

CELL = 0.5         # metres per cell
N = 320            # cells per side: 160 m, so oblique views see scene rather than void
HALF = N * CELL / 2
SPLIT_CODES = {"train": 0, "test": 1, "distractor": 2}

# Materials (display RGB in 0..1). Roof and facade lists are paired per style by a permutation drawn
# from the world seed, so which facade goes with which roof is learnt, not hard-wired.
ROOFS = np.array([
    (0.35, 0.35, 0.37), (0.70, 0.70, 0.68), (0.88, 0.88, 0.86), (0.66, 0.33, 0.22),
    (0.42, 0.30, 0.24), (0.30, 0.48, 0.36), (0.30, 0.40, 0.60), (0.16, 0.16, 0.17),
    (0.72, 0.64, 0.48), (0.40, 0.62, 0.56), (0.55, 0.22, 0.20), (0.45, 0.48, 0.56)], np.float32)
FACADES = np.array([
    (0.90, 0.88, 0.82), (0.82, 0.74, 0.58), (0.62, 0.30, 0.22), (0.80, 0.68, 0.42),
    (0.58, 0.58, 0.58), (0.36, 0.50, 0.66), (0.34, 0.56, 0.54), (0.40, 0.28, 0.22),
    (0.86, 0.62, 0.56), (0.62, 0.74, 0.84), (0.55, 0.55, 0.38), (0.93, 0.86, 0.70)], np.float32)
WINDOWS = np.array([(0.10, 0.13, 0.18), (0.22, 0.30, 0.40), (0.06, 0.06, 0.06), (0.70, 0.76, 0.82)],
                   np.float32)
GROUNDS = np.array([
    (0.32, 0.45, 0.22), (0.56, 0.54, 0.34), (0.52, 0.43, 0.33), (0.64, 0.62, 0.58),
    (0.55, 0.53, 0.50), (0.36, 0.30, 0.24)], np.float32)
CARS = np.array([(0.8, 0.8, 0.8), (0.1, 0.1, 0.1), (0.6, 0.1, 0.1), (0.15, 0.2, 0.5), (0.5, 0.5, 0.5)],
                np.float32)
ASPHALT, SIDEWALK, WATER = (0.30, 0.30, 0.31), (0.66, 0.64, 0.60), (0.18, 0.30, 0.38)


@dataclass(frozen=True)
class Palette:
    """The world's building styles (one palette per world seed, shared by train and test)."""
    roof: np.ndarray        # (K, 3)
    facade: np.ndarray      # (K, 3)
    window: np.ndarray      # (K, 3)
    floor_h: np.ndarray     # (K,) metres per storey
    win_frac: np.ndarray    # (K,) share of the window rhythm that is glass
    win_w: np.ndarray       # (K,) window rhythm along the wall, metres
    floors: np.ndarray      # (K, 2) typical storey range [lo, hi]
    roof_pattern: np.ndarray  # (K,) 0 plain, 1 ridge, 2 rooftop units, 3 seams

    @property
    def size(self) -> int:
        return len(self.roof)


def make_palette(world_seed: int) -> Palette:
    rng = np.random.default_rng([world_seed, 7919])
    k = len(ROOFS)
    jitter = lambda a: np.clip(a * rng.uniform(0.92, 1.08, a.shape), 0, 1).astype(np.float32)
    lo = rng.integers(1, 5, k)
    return Palette(
        roof=jitter(ROOFS[rng.permutation(k)]), facade=jitter(FACADES[rng.permutation(k)]),
        window=WINDOWS[rng.integers(0, len(WINDOWS), k)],
        floor_h=rng.uniform(2.8, 4.5, k).astype(np.float32),
        win_frac=rng.uniform(0.25, 0.75, k).astype(np.float32),
        win_w=rng.uniform(1.6, 3.5, k).astype(np.float32),
        floors=np.stack([lo, lo + rng.integers(2, 9, k)], 1), roof_pattern=rng.integers(0, 4, k))


def location_rngs(world_seed: int, split: str, index: int) -> dict[str, np.random.Generator]:
    """Independent streams per purpose, so rendering fewer views never changes the others."""
    ss = np.random.SeedSequence([world_seed, SPLIT_CODES[split], index])
    names = ("scene", "street", "drone", "photo")
    return dict(zip(names, (np.random.default_rng(s) for s in ss.spawn(len(names)))))


def _grid():
    c = (np.arange(N, dtype=np.float32) + 0.5 - N / 2) * CELL
    return c[None, :].repeat(N, 0), -c[:, None].repeat(N, 1)  # X east, Y north (row 0 north)


GX, GY = _grid()


def value_noise(rng: np.random.Generator, knot: int) -> np.ndarray:
    """Smooth noise in about [-2, 2]: random knots every `knot` cells, smoothstep-interpolated."""
    k = N // knot + 2
    g = rng.standard_normal((k, k)).astype(np.float32)
    t = (np.arange(N, dtype=np.float32) + 0.5) / knot
    i = t.astype(np.int64)
    f = t - i
    f = f * f * (3 - 2 * f)
    rows = g[i] * (1 - f)[:, None] + g[i + 1] * f[:, None]
    return rows[:, i] * (1 - f) + rows[:, i + 1] * f


@dataclass
class Scene:
    height: np.ndarray       # (N, N) metres
    top: np.ndarray          # (N, N, 3) lit top colour (roof / ground / canopy), shadows baked in
    side: np.ndarray         # (N, N, 3) facade albedo
    side_sun: np.ndarray     # (N, N) direct sun share on the facade (0 = faces away)
    bid: np.ndarray          # (N, N) int32 box index into the table (0 = none)
    boxes: dict              # per box arrays (index 0 is a dummy): cx, cy, cos, sin, floor_h, ...
    road: np.ndarray         # (N, N) bool: road or sidewalk, where street cameras stand
    target: dict             # cx, cy, ha, hb, cos, sin, height, style, box ids
    sun: np.ndarray          # unit vector towards the sun
    ambient: np.ndarray      # (3,) sky light
    sun_rgb: np.ndarray      # (3,) direct light
    sky: tuple               # (horizon rgb, zenith rgb)
    haze: float              # metres: distance of 63 % fade to the horizon colour
    outskirts: np.ndarray    # (3,) lit colour of the ground beyond the grid
    meta: dict = field(default_factory=dict)
    cache: dict = field(default_factory=dict)   # renderer's derived arrays


class _Builder:
    """Accumulates boxes (buildings, cars) and trees on the grid."""

    def __init__(self):
        self.height = np.zeros((N, N), np.float32)
        self.top = np.zeros((N, N, 3), np.float32)
        self.side = np.zeros((N, N, 3), np.float32)
        self.nx = np.zeros((N, N), np.float32)
        self.ny = np.zeros((N, N), np.float32)
        self.bid = np.zeros((N, N), np.int32)
        self.blocked = np.zeros((N, N), bool)
        self.crowns = []
        self.rows = [dict(cx=0.0, cy=0.0, cos=1.0, sin=0.0, floor_h=3.0, win_frac=0.0, win_w=2.0,
                          win=np.zeros(3, np.float32), height=0.0, style=-1)]

    @staticmethod
    def window(cx, cy, ha, hb, ang):
        """Local coordinates of the cells in the box's bounding window (or None off-grid)."""
        c, s = np.cos(ang), np.sin(ang)
        ex, ey = abs(ha * c) + abs(hb * s), abs(ha * s) + abs(hb * c)
        j0, j1 = int(np.floor((cx - ex) / CELL + N / 2)), int(np.ceil((cx + ex) / CELL + N / 2)) + 1
        i0, i1 = int(np.floor(N / 2 - (cy + ey) / CELL)), int(np.ceil(N / 2 - (cy - ey) / CELL)) + 1
        i0, j0, i1, j1 = max(i0, 0), max(j0, 0), min(i1, N), min(j1, N)
        if i0 >= i1 or j0 >= j1:
            return None
        sl = (slice(i0, i1), slice(j0, j1))
        dx, dy = GX[sl] - cx, GY[sl] - cy
        return sl, dx * c + dy * s, -dx * s + dy * c, c, s

    def fits(self, cx, cy, ha, hb, ang, gap):
        w = self.window(cx, cy, ha + gap, hb + gap, ang)
        if w is None:
            return False
        sl, lx, ly, _, _ = w
        inside = (np.abs(lx) < ha + gap) & (np.abs(ly) < hb + gap)
        return not (inside & self.blocked[sl]).any()

    def add_box(self, cx, cy, ha, hb, ang, height, roof, facade, win=None, floor_h=3.0, win_frac=0.0,
                win_w=2.0, pattern=0, style=-1, rng=None):
        w = self.window(cx, cy, ha, hb, ang)
        if w is None:
            return 0
        sl, lx, ly, c, s = w
        inside = (np.abs(lx) < ha) & (np.abs(ly) < hb)
        k = len(self.rows)
        self.rows.append(dict(cx=cx, cy=cy, cos=c, sin=s, floor_h=floor_h, win_frac=win_frac, win_w=win_w,
                              win=np.zeros(3, np.float32) if win is None else win, height=height,
                              style=style))
        # Roof texture: darker parapet rim plus the style's pattern (the satellite's style signature).
        rim = np.minimum(ha - np.abs(lx), hb - np.abs(ly)) < 0.8
        shade = np.ones(lx.shape, np.float32)
        if pattern == 1:      # ridge along the long axis: two pitched halves
            across = ly if ha >= hb else lx
            shade = np.where(across > 0, 1.12, 0.82).astype(np.float32)
        elif pattern == 2 and rng is not None:   # rooftop plant: a few pale boxes
            for _ in range(int(rng.integers(1, 4))):
                ux, uy = rng.uniform(-0.6, 0.6) * ha, rng.uniform(-0.6, 0.6) * hb
                shade = np.where((np.abs(lx - ux) < 1.2) & (np.abs(ly - uy) < 1.0), 1.35, shade)
        elif pattern == 3:    # metal seams / panels
            shade = np.where((ly % 1.5) < 0.5, 0.85, 1.0).astype(np.float32)
        shade = np.where(rim, 0.78, shade)
        colour = np.clip(roof[None, None] * shade[..., None], 0, 1)
        sub_h = self.height[sl]
        put = inside & (height >= sub_h)
        self.height[sl] = np.where(put, height, sub_h)
        self.top[sl] = np.where(put[..., None], colour, self.top[sl])
        self.side[sl] = np.where(put[..., None], facade, self.side[sl])
        # Facade normal of the nearest wall, for sun shading of the walls.
        along_a = (ha - np.abs(lx)) < (hb - np.abs(ly))
        sx, sy = np.where(along_a, np.sign(lx), 0), np.where(along_a, 0, np.sign(ly))
        self.nx[sl] = np.where(put, sx * c - sy * s, self.nx[sl])
        self.ny[sl] = np.where(put, sx * s + sy * c, self.ny[sl])
        self.bid[sl] = np.where(put, k, self.bid[sl])
        self.blocked[sl] |= inside
        return k

    def add_tree(self, cx, cy, r, h, green):
        w = self.window(cx, cy, r, r, 0.0)
        if w is None:
            return
        sl, lx, ly, _, _ = w
        d2 = lx * lx + ly * ly
        inside = d2 < r * r
        dome = h - (1 - np.sqrt(np.maximum(1 - d2 / (r * r), 0))) * 0.5 * h   # rounded crown
        put = inside & (dome > self.height[sl])
        self.height[sl] = np.where(put, dome, self.height[sl])
        tint = green * (0.85 + 0.3 * np.sqrt(np.maximum(1 - d2 / (r * r), 0)))[..., None]
        self.top[sl] = np.where(put[..., None], tint, self.top[sl])
        self.side[sl] = np.where(put[..., None], green * 0.8, self.side[sl])
        rr = np.sqrt(d2) + 1e-6
        self.nx[sl] = np.where(put, lx / rr, self.nx[sl])
        self.ny[sl] = np.where(put, ly / rr, self.ny[sl])
        self.bid[sl] = np.where(put, 0, self.bid[sl])
        self.blocked[sl] |= inside
        self.crowns.append((sl, put, lx / r, ly / r, np.sqrt(np.maximum(1 - d2 / (r * r), 0))))


def _cast_shadows(height: np.ndarray, sun_az: float, sun_el: float) -> np.ndarray:
    """Cells whose line to the sun is blocked: march towards the sun one cell along the major axis."""
    dx, dy = np.sin(sun_az), np.cos(sun_az)          # compass azimuth: towards the sun, east/north
    major = max(abs(dx), abs(dy))
    step_m = 2 * CELL / major     # two cells along the major axis: blockers are >= 2 m wide anyway
    hmax = float(height.max())
    steps = int(np.ceil(hmax / np.tan(sun_el) / step_m))
    shadow = np.zeros(height.shape, bool)
    for k in range(1, steps + 1):
        dj, di = int(round(2 * k * dx / major)), int(round(-2 * k * dy / major))
        rise = np.float32(k * step_m * np.tan(sun_el))
        if abs(di) >= N or abs(dj) >= N or rise > hmax:
            break
        # blocker[i, j] = height[i + di, j + dj] (zero off-grid)
        src = height[max(di, 0):N + min(di, 0), max(dj, 0):N + min(dj, 0)]
        dst = shadow[max(-di, 0):N + min(-di, 0), max(-dj, 0):N + min(-dj, 0)]
        base = height[max(-di, 0):N + min(-di, 0), max(-dj, 0):N + min(-dj, 0)]
        dst |= src > base + rise
    return shadow


def make_scene(rng: np.random.Generator, palette: Palette, difficulty: float) -> Scene:
    d = float(difficulty)
    b = _Builder()

    # --- ground: a main type with patches of a second one, noise growing with difficulty ------------
    # Surfaces are material ids first, colours once at the end (one gather instead of many wheres).
    g1, g2 = (int(g) for g in rng.choice(len(GROUNDS), 2, replace=False))
    mat = np.where(value_noise(rng, 40) > rng.uniform(-0.3, 0.8), np.uint8(1), np.uint8(0))
    fine = (value_noise(rng, 6) * np.float32(0.04 + 0.06 * d)
            + value_noise(rng, 20) * np.float32(0.03 + 0.05 * d))

    # --- roads on a rotated grid; a u-road passes beside the target --------------------------------
    theta = rng.uniform(0, np.pi / 2)
    cth, sth = float(np.cos(theta)), float(np.sin(theta))
    u, v = GX * cth + GY * sth, GY * cth - GX * sth
    t_ha, t_hb = rng.uniform(7, 13), rng.uniform(6, 11)      # target main box, half sizes along u, v
    road_w, walk_w = rng.uniform(3.0, 5.0), rng.uniform(1.5, 2.5)
    side = float(rng.choice([-1.0, 1.0]))
    su = rng.uniform(50, 75)
    u0 = side * (t_ha + rng.uniform(2, 6) + walk_w + road_w)
    du = np.abs((u - np.float32(u0 - su / 2)) % np.float32(su) - np.float32(su / 2))
    if rng.random() < 0.7:                          # cross streets, kept off the target
        sv = rng.uniform(60, 85)
        v0 = float(rng.choice([-1.0, 1.0])) * (t_hb + rng.uniform(8, 12) + walk_w + road_w)
        dv = np.abs((v - np.float32(v0 - sv / 2)) % np.float32(sv) - np.float32(sv / 2))
    else:
        dv = np.full_like(du, 1e3)
    near_road = np.minimum(du, dv)
    road = near_road < road_w
    walk = (near_road < road_w + walk_w) & ~road
    lanes = (((du < 0.3) & (v % 6.0 < 3.0) & (dv >= road_w))
             | ((dv < 0.3) & (u % 6.0 < 3.0) & (du >= road_w)))
    mat[road] = 2
    mat[walk] = 3
    mat[lanes] = 4
    b.blocked |= near_road < road_w + walk_w + 0.5

    # --- water: sometimes a pond off the centre ----------------------------------------------------
    if rng.random() < 0.25:
        ang = rng.uniform(0, 2 * np.pi)
        px, py = np.cos(ang) * rng.uniform(30, 55), np.sin(ang) * rng.uniform(30, 55)
        rx, ry = rng.uniform(6, 16), rng.uniform(5, 12)
        pond = ((GX - px) / rx) ** 2 + ((GY - py) / ry) ** 2 + 0.25 * value_noise(rng, 10) < 1
        pond &= ~b.blocked
        mat[pond] = 5
        b.blocked |= pond
    table = np.stack([GROUNDS[g1], GROUNDS[g2], np.array(ASPHALT, np.float32) * rng.uniform(0.85, 1.2),
                      np.array(SIDEWALK, np.float32) * rng.uniform(0.9, 1.1), np.full(3, 0.85, np.float32),
                      np.array(WATER, np.float32)]).astype(np.float32)
    grain = np.array([1.0, 1.0, 0.5, 0.3, 0.0, 0.3], np.float32)   # how much noise each material shows
    shade = 1 + grain[mat] * fine
    for c in range(3):
        b.top[..., c] = table[:, c][mat] * shade

    # --- target: 1-3 boxes of one style near the centre --------------------------------------------
    style = int(rng.integers(palette.size))

    def storeys(st, extra=0):
        lo, hi = palette.floors[st]
        return float(rng.integers(lo, hi + 1) + extra) * float(palette.floor_h[st]) + 0.6

    def style_args(st):
        return dict(roof=palette.roof[st], facade=palette.facade[st], win=palette.window[st],
                    floor_h=float(palette.floor_h[st]), win_frac=float(palette.win_frac[st]),
                    win_w=float(palette.win_w[st]), pattern=int(palette.roof_pattern[st]), style=st)

    tcx, tcy = rng.uniform(-3, 3, 2)
    tx, ty = tcx * cth - tcy * sth, tcx * sth + tcy * cth       # target centre (u, v) -> (x, y)
    t_h = storeys(style, extra=1)
    ids = [b.add_box(tx, ty, t_ha, t_hb, theta, t_h, rng=rng, **style_args(style))]
    for _ in range(int(rng.integers(0, 3))):      # wings and towers; they stick out away from the road
        wa, wb = rng.uniform(3, 6), rng.uniform(3, 7)
        su_, sv_ = rng.uniform(-1, 1) * (t_ha - wa), rng.uniform(-1, 1) * t_hb
        wx, wy = tx + su_ * cth - sv_ * sth, ty + su_ * sth + sv_ * cth
        wh = t_h * rng.choice([rng.uniform(0.4, 0.8), rng.uniform(1.3, 1.9)])
        ids.append(b.add_box(wx, wy, wa, wb, theta, wh, rng=rng, **style_args(style)))
    target = dict(cx=tx, cy=ty, ha=t_ha, hb=t_hb, cos=cth, sin=sth, height=t_h, style=style, boxes=ids)

    # --- other buildings: style-coupled most of the time ---------------------------------------------
    coupling = 0.95 - 0.2 * d
    want = int(rng.integers(8, 16) + 6 * d)
    placed, tries = 0, 0
    while placed < want and tries < want * 8:
        tries += 1
        r = np.sqrt(rng.uniform(0, 1)) * HALF * 1.1
        a = rng.uniform(0, 2 * np.pi)
        cx, cy = r * np.cos(a), r * np.sin(a)
        ha, hb = rng.uniform(4, 11), rng.uniform(4, 10)
        ang = theta + (0 if rng.random() < 0.8 else rng.uniform(-0.6, 0.6))
        if not b.fits(cx, cy, ha, hb, ang, gap=2.0):
            continue
        st = int(rng.integers(palette.size))
        args = style_args(st)
        if rng.random() > coupling:        # an unstyled building: independent roof and facade
            args.update(roof=ROOFS[rng.integers(len(ROOFS))] * rng.uniform(0.85, 1.15),
                        facade=FACADES[rng.integers(len(FACADES))] * rng.uniform(0.85, 1.15), style=-1)
        args["roof"] = np.clip(args["roof"] * rng.uniform(0.94, 1.06, 3), 0, 1).astype(np.float32)
        args["facade"] = np.clip(args["facade"] * rng.uniform(0.94, 1.06, 3), 0, 1).astype(np.float32)
        b.add_box(cx, cy, ha, hb, ang, storeys(st), rng=rng, **args)
        placed += 1

    # --- cars on the roads, trees on free ground ----------------------------------------------------
    road_cells = np.flatnonzero(near_road < road_w - 1.2)
    for _ in range(int(rng.integers(2, 8) + 10 * d)):
        if road_cells.size == 0:
            break
        cell = road_cells[rng.integers(road_cells.size)]
        cx, cy = GX.flat[cell], GY.flat[cell]
        ang = theta + (np.pi / 2 if du.flat[cell] < dv.flat[cell] else 0.0)   # along their road
        col = CARS[rng.integers(len(CARS))]
        b.add_box(cx, cy, 2.2, 0.9, ang, 1.5, roof=col, facade=col * 0.9)
    greens = np.array([(0.20, 0.36, 0.15), (0.27, 0.42, 0.18), (0.16, 0.28, 0.14)], np.float32)
    for _ in range(int(rng.integers(6, 18) + 20 * d)):
        cx, cy = rng.uniform(-HALF, HALF, 2)
        r = rng.uniform(1.5, 3.5)
        if b.fits(cx, cy, r, r, 0.0, gap=0.0):
            b.add_tree(cx, cy, r, rng.uniform(5, 10), greens[rng.integers(3)] * rng.uniform(0.85, 1.15))

    # --- light: random sun, cast shadows, facade shading ---------------------------------------------
    el_lo, el_hi = 35 - 12 * d, 65 + 10 * d
    sun_az, sun_el = rng.uniform(0, 2 * np.pi), np.radians(rng.uniform(el_lo, el_hi))
    sun = np.array([np.sin(sun_az) * np.cos(sun_el), np.cos(sun_az) * np.cos(sun_el), np.sin(sun_el)],
                   np.float32)
    ambient = np.array([0.36, 0.38, 0.44], np.float32) * rng.uniform(0.9, 1.1)
    sun_rgb = np.array([0.78, 0.75, 0.70], np.float32) * rng.uniform(0.9, 1.1)
    direct = np.full((N, N), sun[2], np.float32)
    for sl, put, nx, ny, nz in b.crowns:     # crowns are domes: lit by their slope, round from above
        direct[sl] = np.where(put, np.clip(nx * sun[0] + ny * sun[1] + nz * sun[2], 0, 1), direct[sl])
    direct[_cast_shadows(b.height, sun_az, sun_el)] = 0
    top = b.top * (ambient + sun_rgb * direct[..., None])
    side_sun = np.clip(b.nx * sun[0] + b.ny * sun[1], 0, 1).astype(np.float32)

    boxes = {k: np.array([r[k] for r in b.rows], np.float32)
             for k in ("cx", "cy", "cos", "sin", "floor_h", "win_frac", "win_w", "height")}
    boxes["win"] = np.stack([r["win"] for r in b.rows]).astype(np.float32)
    boxes["style"] = np.array([r["style"] for r in b.rows], np.int32)

    horizon = np.array([0.78, 0.82, 0.86], np.float32) * rng.uniform(0.9, 1.05)
    zenith = np.array([0.36, 0.52, 0.80], np.float32) * rng.uniform(0.85, 1.1)
    return Scene(height=b.height, top=np.clip(top, 0, 1).astype(np.float32), side=b.side, side_sun=side_sun,
                 bid=b.bid, boxes=boxes, road=road | walk, target=target, sun=sun, ambient=ambient,
                 sun_rgb=sun_rgb, sky=(horizon, zenith), haze=float(rng.uniform(350, 700) * (1.2 - 0.6 * d)),
                 outskirts=(GROUNDS[g1] * (ambient + sun_rgb * sun[2])).astype(np.float32),
                 meta=dict(sun_azimuth=float(np.degrees(sun_az)), sun_elevation=float(np.degrees(sun_el)),
                           road_angle=float(np.degrees(theta)), target_style=style, target_height=t_h))

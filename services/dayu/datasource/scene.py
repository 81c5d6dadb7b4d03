"""A synthetic traffic scene with ground truth: vehicles carrying licence plates drive along a road.

The camera stands at the roadside and looks across a road of several lanes, so each lane lies at its own
distance: far lanes sit higher in the frame and everything on them is smaller. Every vehicle carries a
plate on its side (as taxis carry their licence numbers): a white plate, dark border, black text.

Traffic follows phases of a few seconds to a minute drawn by a seeded random generator (quiet, steady,
busy, rush hour on the far carriageway, deliveries on the near one): each phase sets how many vehicles
arrive, how fast they drive, which lanes (near or far) they use and how many are trucks and buses. So
object count, object size and speed change over time, as in the scenes the scheduler adapts to.

The scene at time t depends only on the seed and t: arrivals form one deterministic sequence per lane,
generated lazily, and a vehicle's position follows from its arrival time and its constant speed.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from dayu.v1 import types_pb2


@dataclass(frozen=True)
class Phase:
    """How traffic behaves for a while."""

    rate_per_min: float  # vehicles arriving per minute over the whole road
    speed_mps: tuple[float, float]  # range of speeds, metres per second
    depth_bias: float  # > 0 favours far lanes (small vehicles), < 0 near ones (big vehicles)
    heavy_share: float  # share of trucks and buses


PHASES: dict[str, Phase] = {
    "quiet": Phase(6, (11, 15), 0.0, 0.1),
    "steady": Phase(24, (8, 12), 0.0, 0.15),
    "busy": Phase(60, (6, 10), -0.3, 0.2),
    "rush_hour": Phase(100, (2, 5), 1.6, 0.1),
    "deliveries": Phase(24, (5, 9), -1.6, 0.6),
}

# Layout, in fractions of the frame height: the far lane's wheels touch the road at FAR_BASELINE, the
# near lane's at NEAR_BASELINE; one metre is FAR_SCALE (far lane) to NEAR_SCALE (near lane) of the height.
HORIZON, FAR_BASELINE, NEAR_BASELINE = 0.30, 0.50, 0.90
FAR_SCALE, NEAR_SCALE = 0.045, 0.14
ROAD_TOP, ROAD_BOTTOM = 0.42, 0.94

PLATE_SIZE_M = (1.1, 0.26)  # stylised: larger than real plates, so that they stay legible on the side
PLATE_LETTERS = "ABCDEFGHJKLMNPRSTVWXYZ"  # no I, O, Q, U: never confused with digits
BODY_COLOURS = (  # BGR
    (235, 235, 235),  # white
    (190, 190, 185),  # silver
    (40, 40, 40),  # black
    (40, 40, 190),  # red
    (170, 90, 30),  # blue
    (60, 100, 40),  # green
    (40, 190, 230),  # yellow
    (30, 120, 230),  # orange
    (120, 100, 90),  # slate
)
GLASS = (95, 75, 60)
TYRE, HUB = (25, 25, 25), (40, 40, 42)  # a bright hub in a dark tyre reads as "O"


@dataclass(frozen=True)
class Body:
    """The shape of a vehicle kind, in metres."""

    kind: str
    length: float
    height: float
    wheel_radius: float


BODIES = {
    "car": Body("car", 4.4, 1.45, 0.33),
    "van": Body("van", 5.2, 2.1, 0.36),
    "truck": Body("truck", 8.5, 3.2, 0.5),
    "bus": Body("bus", 11.0, 3.1, 0.5),
}


@dataclass(frozen=True)
class Vehicle:
    """One vehicle's whole trip across the frame: it enters at `arrives` and is gone at `leaves`."""

    key: tuple[int, int]  # (lane, number in lane)
    body: Body
    colour: tuple[int, int, int]
    plate: str
    speed: float  # metres per second
    arrives: float
    leaves: float


@dataclass(frozen=True)
class Placement:
    """Where a vehicle is drawn on one frame: its sprite's top-left corner and its plate, in frame pixels."""

    vehicle: Vehicle
    lane: Lane
    x: int
    y: int
    plate_box: tuple[int, int, int, int]


@dataclass(frozen=True)
class Lane:
    """A lane as the camera sees it."""

    index: int  # 0 is the nearest
    depth: float  # 0 (near) .. 1 (far)
    baseline: float  # y in pixels where wheels touch the road
    scale: float  # pixels per metre
    direction: int  # +1 drives right, -1 left
    length_m: float  # visible road length


KEPT_PHASES = 256  # a timeline's phases kept, the latest: hours of them


class _Timeline:
    """The phases over time: a deterministic sequence drawn lazily from the seed."""

    def __init__(self, seed: int, names: Sequence[str], min_s: float, max_s: float) -> None:
        self._rng = np.random.default_rng([seed, 0])
        self._names = list(names)
        self._min_s, self._max_s = min_s, max_s
        self.starts: list[float] = [0.0]
        self.names: list[str] = [self._names[int(self._rng.integers(len(self._names)))]]
        self._end = self._draw_duration()

    def _draw_duration(self) -> float:
        return self.starts[-1] + float(self._rng.uniform(self._min_s, self._max_s))

    def at(self, t: float) -> tuple[str, float]:
        """The phase at time t and when it ends."""
        while self._end <= t:
            others = [name for name in self._names if name != self.names[-1]] or self._names
            self.starts.append(self._end)
            self.names.append(others[int(self._rng.integers(len(others)))])
            self._end = self._draw_duration()
            # The scene only moves forward (its lanes a little apart): the last phases are enough.
            del self.starts[:-KEPT_PHASES], self.names[:-KEPT_PHASES]
        i = max(0, bisect.bisect_right(self.starts, t) - 1)
        end = self.starts[i + 1] if i + 1 < len(self.starts) else self._end
        return self.names[i], end


class _Traffic:
    """The arrivals on one lane: a Poisson process whose rate follows the phases, where a vehicle waits
    at the edge of the frame until it can never catch up with the one ahead (no overtaking in a lane)."""

    def __init__(self, seed: int, lane: Lane, weights: dict[str, float], traffic: float, timeline: _Timeline) -> None:
        self._rng = np.random.default_rng([seed, 1 + lane.index])
        self._lane = lane
        self._rates = {name: PHASES[name].rate_per_min / 60 * traffic * weight for name, weight in weights.items()}
        self._timeline = timeline
        self._on_road: deque[Vehicle] = deque()  # arrived and not yet gone, in order of arrival
        self._last: Vehicle | None = None  # the latest arrival, which the next one must not catch up with
        self._count = 0
        self._next = self._after(0.0)

    def _after(self, t: float) -> float:
        """The next candidate arrival after t (memoryless: redrawn at each phase change)."""
        while True:
            name, end = self._timeline.at(t)
            gap = self._rng.exponential(1 / self._rates[name]) if self._rates[name] > 0 else math.inf
            if t + gap < end:
                return t + gap
            t = end

    def _vehicle(self, candidate: float) -> Vehicle:
        phase = PHASES[self._timeline.at(candidate)[0]]
        rng = self._rng
        heavy = rng.random() < phase.heavy_share
        body = BODIES[str(rng.choice(["truck", "bus"] if heavy else ["car", "car", "car", "van"]))]
        body = Body(body.kind, body.length * float(rng.uniform(0.93, 1.07)), body.height, body.wheel_radius)
        speed = float(rng.uniform(*phase.speed_mps)) * (0.85 if heavy else 1.0)
        colour = BODY_COLOURS[int(rng.integers(len(BODY_COLOURS)))]
        letters = rng.choice(list(PLATE_LETTERS), 5)
        digits = rng.integers(0, 10, 2)
        plate = f"{letters[0]}{letters[1]}{digits[0]}{digits[1]} {letters[2]}{letters[3]}{letters[4]}"
        arrives = candidate
        if self._last is not None:  # the gap to the vehicle ahead is linear in time: check both ends
            ahead, gap = self._last, 2.0 + 0.8 * speed
            arrives = max(
                arrives,
                ahead.arrives + (ahead.body.length + gap) / ahead.speed,
                ahead.leaves - (self._lane.length_m - gap) / speed,
            )
        leaves = arrives + (self._lane.length_m + body.length) / speed
        self._count += 1
        return Vehicle((self._lane.index, self._count), body, colour, plate, speed, arrives, leaves)

    def on_road(self, t: float) -> list[Vehicle]:
        """The vehicles on this lane at time t, which never goes back (vehicles gone are forgotten)."""
        while self._next <= t:
            self._last = self._vehicle(self._next)
            self._on_road.append(self._last)
            self._next = self._after(self._last.arrives)
        while self._on_road and self._on_road[0].leaves <= t:  # no overtaking: they leave in arrival order
            self._on_road.popleft()
        return [vehicle for vehicle in self._on_road if vehicle.arrives <= t]


class TrafficScene:
    """Renders the scene at any time, with the true plate boxes.

    Time only moves forward (make a new scene to start over): vehicles that are gone are forgotten, so
    a scene played for days holds only what is on the road. Ground truth holds the plates a reader
    could read: fully inside the frame, not covered by a nearer vehicle, and at least
    `min_plate_height_px` pixels high (the characters take 60% of that). PP-OCR (rapidocr) reads
    nearly all plates of 10 pixels and more, none of 7 or less."""

    def __init__(
        self,
        width: int,
        height: int,
        seed: int,
        lanes: int = 4,
        traffic: float = 1.0,
        phases: Sequence[str] = tuple(PHASES),
        phase_s: tuple[float, float] = (5.0, 60.0),
        min_plate_height_px: float = 10.0,
    ) -> None:
        self.width, self.height, self.seed = width, height, seed
        self.min_plate_height_px = min_plate_height_px
        self.timeline = _Timeline(seed, phases, *phase_s)
        self.lanes = [self._lane(i, lanes) for i in range(lanes)]
        self._traffic = [
            _Traffic(seed, lane, _lane_weights(self.lanes, lane, phases), traffic, self.timeline) for lane in self.lanes
        ]
        self.background = _background(width, height, seed, tuple(lane.baseline for lane in self.lanes))
        self._sprites: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        self._now = 0.0

    def _lane(self, index: int, count: int) -> Lane:
        depth = index / (count - 1)
        scale = (NEAR_SCALE + (FAR_SCALE - NEAR_SCALE) * depth) * self.height
        baseline = (NEAR_BASELINE + (FAR_BASELINE - NEAR_BASELINE) * depth) * self.height
        direction = 1 if index < _right_lanes(count) else -1  # near carriageway drives right, far one left
        return Lane(index, depth, baseline, scale, direction, self.width / scale)

    def phase(self, t: float) -> str:
        return self.timeline.at(t)[0]

    def placements(self, t: float) -> list[Placement]:
        """Every vehicle on the road at time t, far lanes first (the order in which they are drawn)."""
        if t < self._now:
            raise ValueError(f"the scene is at {self._now} s and cannot go back to {t} s; start a new one")
        self._now = t
        placed = []
        for lane, traffic in zip(reversed(self.lanes), reversed(self._traffic), strict=True):
            for vehicle in traffic.on_road(t):
                length = vehicle.body.length
                rear = (t - vehicle.arrives) * vehicle.speed - length  # metres past the entry edge
                left = rear * lane.scale if lane.direction > 0 else self.width - (rear + length) * lane.scale
                x, y = round(left), round(lane.baseline - vehicle.body.height * lane.scale)
                x1, y1, x2, y2 = _plate_box(vehicle.body, lane.scale, lane.direction < 0)
                placed.append(Placement(vehicle, lane, x, y, (x + x1, y + y1, x + x2, y + y2)))
        return placed

    def render(self, t: float) -> tuple[np.ndarray, list[types_pb2.Detection]]:
        """The frame at time t (BGR uint8) and the legible plates on it."""
        frame = self.background.copy()
        drawn = []
        for placement in self.placements(t):
            sprite, mask = self._sprite(placement)
            _paste(frame, sprite, mask, placement.x, placement.y)
            drawn.append((placement, mask))
        truth = [
            types_pb2.Detection(
                box=types_pb2.Box(x1=x1, y1=y1, x2=x2, y2=y2), label="plate", score=1.0, text=placement.vehicle.plate
            )
            for i, (placement, _) in enumerate(drawn)
            if self._legible(placement, drawn[i + 1 :])
            for x1, y1, x2, y2 in [placement.plate_box]
        ]
        live = {placement.vehicle.key for placement, _ in drawn}
        for key in [key for key in self._sprites if key not in live]:
            del self._sprites[key]
        return frame, truth

    def _legible(self, placement: Placement, nearer: list[tuple[Placement, np.ndarray]]) -> bool:
        x1, y1, x2, y2 = placement.plate_box
        if x1 < 0 or y1 < 0 or x2 > self.width or y2 > self.height or y2 - y1 < self.min_plate_height_px:
            return False
        for other, mask in nearer:  # covered by an opaque pixel of a vehicle drawn later?
            cx1, cy1 = max(x1, other.x), max(y1, other.y)
            cx2, cy2 = min(x2, other.x + mask.shape[1]), min(y2, other.y + mask.shape[0])
            if cx1 < cx2 and cy1 < cy2 and mask[cy1 - other.y : cy2 - other.y, cx1 - other.x : cx2 - other.x].any():
                return False
        return True

    def _sprite(self, placement: Placement) -> tuple[np.ndarray, np.ndarray]:
        key = placement.vehicle.key
        if key not in self._sprites:
            self._sprites[key] = _draw_vehicle(placement.vehicle, placement.lane.scale, placement.lane.direction < 0)
        return self._sprites[key]


def _right_lanes(count: int) -> int:
    """How many lanes, from the nearest, drive to the right."""
    return (count + 1) // 2


def _lane_weights(lanes: Sequence[Lane], lane: Lane, phases: Sequence[str]) -> dict[str, float]:
    """The share of each phase's traffic that takes `lane`, following the phase's depth bias."""

    def pull(name: str, depth: float) -> float:
        return math.exp(PHASES[name].depth_bias * 2 * (depth - 0.5))

    return {name: pull(name, lane.depth) / sum(pull(name, other.depth) for other in lanes) for name in phases}


def _plate_box(body: Body, scale: float, facing_left: bool) -> tuple[int, int, int, int]:
    """The plate's pixels inside the vehicle's sprite: on the lower body panel, or on a truck's cargo box."""
    if body.kind == "truck":
        centre, bottom = (body.length - 2.1) / 2, body.height - 0.65
    else:
        centre, bottom = body.length / 2, body.height - 0.3
    if facing_left:
        centre = body.length - centre
    width, height = PLATE_SIZE_M[0] * scale, PLATE_SIZE_M[1] * scale
    x1, y1 = round(centre * scale - width / 2), round(bottom * scale - height)
    return x1, y1, x1 + max(1, round(width)), y1 + max(1, round(height))


def _paste(frame: np.ndarray, sprite: np.ndarray, mask: np.ndarray, x: int, y: int) -> None:
    """Copies the sprite's opaque pixels onto the frame at (x, y), clipped to the frame."""
    fx1, fy1 = max(x, 0), max(y, 0)
    fx2, fy2 = min(x + sprite.shape[1], frame.shape[1]), min(y + sprite.shape[0], frame.shape[0])
    if fx1 >= fx2 or fy1 >= fy2:
        return
    region = (slice(fy1 - y, fy2 - y), slice(fx1 - x, fx2 - x))
    np.copyto(frame[fy1:fy2, fx1:fx2], sprite[region], where=mask[region][..., None])


def _draw_vehicle(vehicle: Vehicle, scale: float, facing_left: bool) -> tuple[np.ndarray, np.ndarray]:
    """The vehicle's side view at `scale` pixels per metre, facing right (or left), with its plate, and
    the mask of its opaque pixels."""
    body = vehicle.body
    length, ground, colour = body.length, body.height, vehicle.colour
    width, height = math.ceil(length * scale) + 1, math.ceil(ground * scale) + 1
    sprite = np.zeros((height, width, 3), np.uint8)
    mask = np.zeros((height, width), np.uint8)

    def px(x_m: float, y_m: float) -> tuple[int, int]:
        """A point given in metres from the rear (x) and down from the roof (y)."""
        return round(x_m * scale), round(y_m * scale)

    def poly(points: Sequence[tuple[float, float]], fill: tuple[int, int, int]) -> None:
        pts = np.array([px(*p) for p in points], np.int32)
        cv2.fillPoly(sprite, [pts], fill, cv2.LINE_AA)
        cv2.fillPoly(mask, [pts], 255)

    def box(x1: float, y1: float, x2: float, y2: float, fill: tuple[int, int, int]) -> None:
        poly([(x1, y1), (x2, y1), (x2, y2), (x1, y2)], fill)

    if body.kind == "car":
        belt = ground - 0.95
        poly([(0.1, belt), (length * 0.2, 0.05), (length * 0.72, 0.05), (length * 0.9, belt)], colour)
        poly(
            [(length * 0.27, belt - 0.05), (length * 0.3, 0.16), (length * 0.48, 0.16), (length * 0.48, belt - 0.05)],
            GLASS,
        )
        poly(
            [(length * 0.51, belt - 0.05), (length * 0.51, 0.16), (length * 0.69, 0.16), (length * 0.8, belt - 0.05)],
            GLASS,
        )
        box(0, belt, length, ground - 0.2, colour)
    elif body.kind == "van":
        poly([(0, 0), (length * 0.78, 0), (length, 0.75), (length, ground - 0.2), (0, ground - 0.2)], colour)
        poly([(length * 0.8, 0.12), (length * 0.97, 0.75), (length * 0.8, 0.75)], GLASS)
        box(length * 0.6, 0.12, length * 0.76, 0.75, GLASS)
    elif body.kind == "truck":
        cargo = tuple(int(c * 0.6 + 100) for c in colour)
        box(0, 0, length - 2.1, ground - 0.55, cargo)
        poly(
            [
                (length - 2, 0.45),
                (length - 0.3, 0.45),
                (length, 1.1),
                (length, ground - 0.25),
                (length - 2, ground - 0.25),
            ],
            colour,
        )
        box(length - 1.1, 0.6, length - 0.2, 1.3, GLASS)
        box(0.3, ground - 0.6, length - 2.0, ground - 0.45, TYRE)  # chassis
    else:  # bus
        box(0, 0.05, length, ground - 0.25, colour)
        for i in range(int((length - 2.2) // 1.6)):
            box(0.5 + i * 1.6, 0.4, 1.9 + i * 1.6, 1.35, GLASS)
        box(length - 1.0, 0.4, length - 0.15, 2.2, GLASS)  # door
    axles = (0.8, length - 0.8) if body.kind in ("car", "van") else (2.0, length - 1.6)
    for x in axles:
        centre, radius = px(x, ground - body.wheel_radius), max(2, round(body.wheel_radius * scale))
        cv2.circle(sprite, centre, radius, TYRE, -1, cv2.LINE_AA)
        cv2.circle(sprite, centre, max(1, round(radius * 0.3)), HUB, -1, cv2.LINE_AA)
        cv2.circle(mask, centre, radius, 255, -1)
    lights = ground - (0.95 if body.kind == "car" else 1.0)
    box(length - 0.12, lights, length, lights + 0.2, (200, 245, 255))  # headlight
    box(0, lights, 0.1, lights + 0.2, (30, 30, 200))  # tail light
    if facing_left:
        sprite, mask = sprite[:, ::-1].copy(), mask[:, ::-1].copy()
    x1, y1, x2, y2 = _plate_box(body, scale, facing_left)  # drawn after flipping: text never mirrored
    sprite[y1:y2, x1:x2] = _plate_image(vehicle.plate, x2 - x1, y2 - y1)
    mask[y1:y2, x1:x2] = 255
    return sprite, mask > 0


@lru_cache(maxsize=64)  # a plate is drawn once per vehicle on the road (its sprite is kept while it is)
def _plate_template(text: str) -> np.ndarray:
    """The plate drawn large (440x104 pixels), to be shrunk: small text stays smooth and legible."""
    width, height = 440, 104
    plate = np.full((height, width, 3), 245, np.uint8)
    cv2.rectangle(plate, (3, 3), (width - 4, height - 4), (30, 30, 30), 6)
    font, thickness = cv2.FONT_HERSHEY_DUPLEX, 7
    (text_w, text_h), _ = cv2.getTextSize(text, font, 1.0, thickness)
    size = min(0.86 * width / text_w, 0.6 * height / text_h)
    (text_w, text_h), _ = cv2.getTextSize(text, font, size, thickness)
    origin = ((width - text_w) // 2, (height + text_h) // 2)
    cv2.putText(plate, text, origin, font, size, (10, 10, 10), thickness, cv2.LINE_AA)
    return plate


def _plate_image(text: str, width: int, height: int) -> np.ndarray:
    return cv2.resize(_plate_template(text), (width, height), interpolation=cv2.INTER_AREA)


@lru_cache(maxsize=8)
def _background(width: int, height: int, seed: int, baselines: tuple[float, ...]) -> np.ndarray:
    """Sky, buildings and trees behind the road, the road with its lane markings, a verge in front:
    textured with seeded noise, and no text. PP-OCR's detector still takes rows of trees and building
    edges for text lines at 720p and above; a plate reader drops them by shape (text_detector's
    min_aspect and max_height_share)."""
    rng = np.random.default_rng([seed, 9999])
    horizon, road_top, road_bottom = round(HORIZON * height), round(ROAD_TOP * height), round(ROAD_BOTTOM * height)
    pavement = horizon + round(0.08 * height)
    sky = np.array([235, 200, 150], np.float32)
    frame = np.empty((height, width, 3), np.float32)
    frame[:] = sky + np.linspace(0, 1, height, dtype=np.float32)[:, None, None] * (np.array([250, 235, 215]) - sky)
    x = 0
    while x < width:  # buildings: plain blocks of varied height and tone, hazy with distance
        w = int(rng.uniform(0.05, 0.14) * width)
        top = int(rng.uniform(0.08, 0.26) * height)
        tone = np.array([rng.uniform(0.85, 1.0), rng.uniform(0.9, 1.0), 1.0]) * rng.uniform(110, 190)
        cv2.rectangle(frame, (x, top), (x + w, pavement), (0.4 * tone + 0.6 * sky).tolist(), -1)
        x += w + int(rng.uniform(0, 0.03) * width)
    for _ in range(max(3, width // 80)):  # trees along the far pavement: irregular canopies
        cx, r = rng.uniform(0, width), rng.uniform(0.025, 0.05) * height
        green = (60, rng.uniform(115, 150), 70)
        for dx, dy, dr in rng.uniform([-0.7, -0.5, 0.6], [0.7, 0.3, 0.9], (4, 3)):
            centre = (round(cx + dx * r), round(pavement - 1.2 * r + dy * r))
            cv2.circle(frame, centre, round(dr * r), green, -1, cv2.LINE_AA)
    frame[pavement:road_top] = (150, 155, 160)  # far pavement
    frame[road_top:road_bottom] = (88, 90, 92)  # asphalt
    frame[road_bottom:] = (60, 140, 80)  # grass verge
    dividers = [(a + b) / 2 for a, b in itertools.pairwise(baselines)]
    middle = _right_lanes(len(baselines)) - 1
    dash, step = max(6, width // 24), max(12, width // 12)
    for i, y in enumerate(dividers):
        y = round(y)
        thick = max(1, height // 180)
        if i == middle:  # the two carriageways: a solid double yellow line
            for dy in (-thick * 2, thick * 2):
                cv2.line(frame, (0, y + dy), (width, y + dy), (40, 190, 220), thick, cv2.LINE_AA)
        else:
            for x0 in range(0, width, step):
                cv2.line(frame, (x0, y), (x0 + dash, y), (225, 225, 225), thick, cv2.LINE_AA)
    noise = cv2.GaussianBlur(rng.normal(0, 9, (height, width)).astype(np.float32), (0, 0), 1.2)
    frame += noise[..., None]
    background = np.clip(frame, 0, 255).astype(np.uint8)
    background.setflags(write=False)  # shared by every scene of this size and seed
    return background

"""Generate the demo's order data, fantasma/_demo/orders.csv, from a fixed seed.

The CSV is committed, so the demo never runs this script; it is kept so that
the data can be regenerated or extended. The same seed gives the same file::

    python examples/generate_orders.py
"""

from __future__ import annotations

import argparse
import csv
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

SEED = 20300101
ORDER_COUNT = 300
FIRST_ORDER_NUMBER = 10001
START = datetime(2030, 1, 14, 7, 0, tzinfo=UTC)
DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "fantasma/_demo/orders.csv"

# Relative order volume of each region; the totals in the demo differ visibly.
REGIONS = {
    "eu-west": 30,
    "eu-central": 25,
    "us-east": 20,
    "us-west": 15,
    "apac": 10,
}
NAME_STEMS = [
    "Alder", "Birch", "Cobalt", "Delta", "Ember", "Fjord", "Granite", "Harbor",
    "Iris", "Juniper", "Kestrel", "Lumen", "Meridian", "Nimbus", "Orchid",
    "Pioneer", "Quartz", "Riverside", "Summit", "Tundra",
]  # fmt: skip
NAME_KINDS = [
    "Bakery", "Books", "Cycles", "Dental", "Foods", "Garden Supply", "Hardware",
    "Labs", "Logistics", "Outfitters", "Pharmacy", "Print Shop", "Studio",
    "Textiles", "Tools",
]  # fmt: skip
UNPAID_SHARE = 0.08


def generate(seed: int, count: int) -> list[dict[str, str]]:
    """Return ``count`` orders in time order, the same list for the same seed."""
    rng = random.Random(seed)
    customers = sorted(
        {f"{rng.choice(NAME_STEMS)} {rng.choice(NAME_KINDS)}" for _ in range(80)}
    )
    regions = list(REGIONS)
    weights = list(REGIONS.values())
    rows = []
    moment = START
    for number in range(FIRST_ORDER_NUMBER, FIRST_ORDER_NUMBER + count):
        # Orders arrive about every 2.5 minutes on average over the day.
        moment += timedelta(seconds=round(rng.expovariate(1 / 150)))
        # Basket values are skewed: many small orders, a few large ones.
        amount = Decimal(str(round(rng.lognormvariate(4.2, 0.8), 2))).quantize(
            Decimal("0.01")
        )
        rows.append(
            {
                "order_id": f"ORD-{number}",
                "customer": rng.choice(customers),
                "region": rng.choices(regions, weights)[0],
                "amount_eur": str(amount),
                "payment_status": "unpaid" if rng.random() < UNPAID_SHARE else "paid",
                "ordered_at": moment.isoformat().replace("+00:00", "Z"),
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--count", type=int, default=ORDER_COUNT)
    args = parser.parse_args()
    rows = generate(args.seed, args.count)
    with args.output.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {len(rows)} orders to {args.output}")


if __name__ == "__main__":
    main()

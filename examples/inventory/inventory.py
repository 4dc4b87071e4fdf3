"""Inventory: pick an order in a warehouse whose bins you have to look up, then ship it.

A task of a kind the built-in envs do not cover: every decision depends on what the last tool
returned. `lookup(item)` answers with the item's bin, `pick(bin)` takes what that bin holds (an
integer argument), and the pick's answer names the next item to look up; `ship()` ends the episode.
Some labels are torn: the lookup then names two bins, one of which holds another item, so any
student guesses there (as the expert, who knows the warehouse, never has to). A wrong item in the
cart is recoverable: `putback()` returns the last item picked, and a torn label, once its wrong bin
has been tried, names only the right one. The oracle acts from any state: put back while the cart
is off the order, else look up the next item, pick it from its bin, and ship when all are picked.

Horizon T is the number of items, so a correct episode takes 2T + 1 calls.
"""

from __future__ import annotations

import random

from sftbc import BadCall, Message, ToolEnv, tool_call

ITEMS = ("apple", "pear", "fig", "lime", "plum", "kiwi", "date", "lemon", "melon", "grape", "mango", "peach",
         "olive", "onion", "leek", "bean", "corn", "rice", "salt", "tea", "soap", "wax", "nail", "tape")
P_TORN = 0.1  # the chance that an item's label is torn


class Inventory(ToolEnv):
    def __init__(self, horizon: int, max_steps: int | None = None):
        if not 1 <= horizon <= len(ITEMS) // 2:
            raise ValueError(f"inventory horizon (items per order) must be in 1..{len(ITEMS) // 2}, got {horizon}")
        super().__init__(horizon, max_steps or 4 * horizon + 6)  # 2T + 1 calls, and room for recoveries

    def start(self, seed: int) -> str:
        rng = random.Random(f"inventory-{self.horizon}-{seed}")
        items = rng.sample(ITEMS, 2 * self.horizon)
        self.order, others = items[: self.horizon], items[self.horizon :]
        self.bin_of = dict(zip(items, rng.sample(range(10, 100), len(items))))
        # a torn label names the item's bin and the bin of an item that is not on the order, in either order
        self.torn = {item: self.bin_of[other] for item, other in zip(self.order, others) if rng.random() < P_TORN}
        self.wrong_first = {item: rng.random() < 0.5 for item in self.torn}
        self.cart: list[str] = []
        self.looked_up = None  # the item the last call looked up, if the last call was a lookup
        return f'Pick the {self.horizon} items of the order one by one, then ship it. Next item: "{self.order[0]}".'

    # -- tools ---------------------------------------------------------------------------------
    def lookup(self, item: str) -> str:
        """Find the bin an item is kept in.

        Args:
            item: the item's name, e.g. pear
        """
        if item not in self.bin_of:
            raise BadCall(f"error: the warehouse has no {item[:20]!r}")
        self.looked_up = item
        if item in self.torn:
            a, b = self.bin_of[item], self.torn[item]
            a, b = (b, a) if self.wrong_first[item] else (a, b)
            return f'"{item}" is in bin {a} or bin {b} (torn label).'
        return f'"{item}" is in bin {self.bin_of[item]}.'

    def pick(self, bin: int) -> str:
        """Take the item kept in a bin and put it in the cart.

        Args:
            bin: the bin number
        """
        item = next((i for i, b in self.bin_of.items() if b == bin), None)
        if item is None:
            raise BadCall(f"error: there is no bin {bin}")
        self.looked_up = None
        self.cart.append(item)
        return f'picked "{item}". {self._status()}'

    def putback(self) -> str:
        """Put the last item you picked back in its bin."""
        if not self.cart:
            raise BadCall("error: the cart is empty")
        self.looked_up = None
        item = self.cart.pop()
        # the torn label whose wrong bin this was now names only the right one
        self.torn = {k: b for k, b in self.torn.items() if b != self.bin_of[item]}
        return f'put "{item}" back in bin {self.bin_of[item]}. {self._status()}'

    def ship(self) -> str:
        """Ship the cart; ends the episode."""
        self.finish(self.cart == self.order)
        return "shipped" if self.cart == self.order else "shipped the wrong items"

    def _status(self) -> str:
        if not self._on_order():
            return "The cart is off the order."
        if len(self.cart) == len(self.order):
            return "All items picked."
        return f'Next item: "{self.order[len(self.cart)]}".'

    def _on_order(self) -> bool:
        return self.cart == self.order[: len(self.cart)]

    # -- the expert ------------------------------------------------------------------------------
    def oracle_action(self) -> Message:
        if not self._on_order():
            return tool_call("putback")
        if len(self.cart) == len(self.order):
            return tool_call("ship")
        item = self.order[len(self.cart)]
        if self.looked_up == item:
            return tool_call("pick", bin=self.bin_of[item])
        return tool_call("lookup", item=item)

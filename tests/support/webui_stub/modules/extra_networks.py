"""modules/extra_networks.py: ``<name:args>`` parsing (``parse_prompts``) and ``activate`` calling
the registered extra networks (the built-in Lora registers ``lora``)."""

import re

re_extra_net = re.compile(r"<(\w+):([^>]+)>")
extra_network_registry = {}


class ExtraNetworkParams:
    def __init__(self, items=None):
        self.items = items or []
        self.positional = []
        self.named = {}
        for item in self.items:
            parts = item.split("=", 2) if isinstance(item, str) else [item]
            if len(parts) == 2:
                self.named[parts[0]] = parts[1]
            else:
                self.positional.append(item)


def parse_prompt(prompt):
    res = {}

    def found(m):
        res.setdefault(m.group(1), []).append(ExtraNetworkParams(items=m.group(2).split(":")))
        return ""

    return re.sub(re_extra_net, found, prompt), res


def parse_prompts(prompts):
    res, extra_data = [], None
    for prompt in prompts:
        updated, parsed = parse_prompt(prompt)
        if extra_data is None:
            extra_data = parsed
        res.append(updated)
    return res, extra_data or {}


def activate(p, extra_network_data):
    for name, extra in extra_network_registry.items():
        extra.activate(p, extra_network_data.get(name, []))

#!/usr/bin/env python3
"""Evaluates a rendered ValidatingAdmissionPolicy's CEL on admission requests, the way the
apiserver does: match conditions, then variables, then validations.

Usage: admission_cel.py INPUT.json, where INPUT is {"policy": <policy>, "requests":
[{"request": ..., "object": ..., "oldObject": ...}]}. Prints one JSON list: per request,
null when the match conditions leave it alone, else the messages of the failed
validations (empty: admitted). Needs PyPI `common-expression-language` (module `cel`).
"""
import json
import sys

import cel


def admit(spec, review):
    context = dict(review)
    if not all(cel.evaluate(c["expression"], context) for c in spec.get("matchConditions", [])):
        return None
    variables = {}
    for variable in spec.get("variables", []):
        context["variables"] = variables
        variables[variable["name"]] = cel.evaluate(variable["expression"], context)
    context["variables"] = variables
    failed = []
    for validation in spec["validations"]:
        if cel.evaluate(validation["expression"], context) is not True:
            message = validation.get("message")
            if message is None:
                message = cel.evaluate(validation["messageExpression"], context)
            failed.append(message)
    return failed


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        data = json.load(f)
    spec = data["policy"]["spec"]
    print(json.dumps([admit(spec, review) for review in data["requests"]]))


if __name__ == "__main__":
    main()

"""The chat template (docs/architecture.md), built here only: SFT examples (data/sft.py) and chat (inference.Chat).

A conversation is BOS once, then per message `<|start_header_id|>{role}<|end_header_id|>` "\\n\\n" {content stripped}
`<|eot_id|>`; a prompt for the model ends with the assistant's header. `encode` maps text to ids; `t` has the ids of
the roles (the config's tokens.* or a data.tokenizer.Tokenizer).
"""


def header(role, encode, t):
    """`<|start_header_id|>{role}<|end_header_id|>\\n\\n` as ids."""
    return [t.start_header_id] + encode(role) + [t.end_header_id] + encode("\n\n")


def message(role, content, encode, t):
    """(header ids, body ids) of one message; the body is the stripped content followed by `<|eot_id|>`."""
    return header(role, encode, t), encode(content.strip()) + [t.eot_id]

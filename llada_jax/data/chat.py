"""Chat templates (docs/architecture.md), built here only: SFT examples (data/sft.py) and chat (inference.Chat).

The built-in template: a conversation is BOS once, then per message `<|start_header_id|>{role}<|end_header_id|>`
"\\n\\n" {content stripped} `<|eot_id|>`; a prompt for the model ends with the assistant's header. `encode` maps text
to ids; `t` has the ids of the roles (the config's tokens.* or a data.tokenizer.Tokenizer).

A model's own template (data.chat_template, e.g. the ChatML that `llada convert from-gguf` writes): `Template`.
"""
from llada_jax.errors import LladaError


class ChatTemplateError(LladaError):
    """A chat template that cannot be read or rendered, or whose renderings do not extend each other."""


class Template:
    """A Jinja chat template file, rendered as transformers renders chat templates (a sandboxed environment with
    trim_blocks and lstrip_blocks; `messages` as a list of {role, content}, `add_generation_prompt`). The text it
    writes holds special tokens by name, so it is encoded with a codec that parses them (a tokenizer.json's)."""

    def __init__(self, path):
        try:
            import jinja2.sandbox  # the `gguf` extra
        except ImportError:
            raise ChatTemplateError(f"the chat template {path} needs jinja2: pip install 'llada-jax[gguf]'.") from None
        try:
            with open(path, encoding="utf-8") as f:
                source = f.read()
            env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            self.template = env.from_string(source)
        except (OSError, jinja2.TemplateError) as e:
            raise ChatTemplateError(f"chat template {path} cannot be read ({e}); fix data.chat_template (\"\" for the "
                                    f"built-in template).") from None
        self.path = path

    def render(self, turns, add_generation_prompt=False):
        """[(role, content)] -> the conversation's text (ending with the assistant's header if
        add_generation_prompt)."""
        return self.template.render(messages=[{"role": r, "content": c} for r, c in turns],
                                    add_generation_prompt=add_generation_prompt)

    def pairs(self, turns, encode):
        """[(role, content)] -> [(prompt ids, answer ids)], one pair per assistant message: the prompt renders the
        messages before it with the generation prompt; the answer is the text the message adds to that (its content
        and the template's end of turn)."""
        out = []
        for i, (role, _) in enumerate(turns):
            if role != "assistant":
                continue
            prompt, full = self.render(turns[:i], True), self.render(turns[:i + 1])
            if not full.startswith(prompt):
                raise ChatTemplateError(f"chat template {self.path}: the conversation up to an assistant message does "
                                        f"not start with its prompt (the rendering before it with "
                                        f"add_generation_prompt), so the answer cannot be told apart.")
            out.append((encode(prompt), encode(full[len(prompt):])))
        return out


def header(role, encode, t):
    """`<|start_header_id|>{role}<|end_header_id|>\\n\\n` as ids."""
    return [t.start_header_id] + encode(role) + [t.end_header_id] + encode("\n\n")


def message(role, content, encode, t):
    """(header ids, body ids) of one message; the body is the stripped content followed by `<|eot_id|>`."""
    return header(role, encode, t), encode(content.strip()) + [t.eot_id]

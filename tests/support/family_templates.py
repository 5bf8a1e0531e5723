"""The chat templates the model families publish, as Jinja (their tokenizer_config.json text).

Tool-calling branches are left out; what remains renders a plain conversation exactly as the
published template does. Sources: Saiga's `<s>{role}\\n{content}</s>\\n` format with its `<s>bot`
reply prompt (IlyaGusev's Saiga/GigaSaiga/ruGPT-3.5 chat code), Meta's Llama 3 Instruct
template (Saiga-Llama3), ChatML (Qwen2.5/T-lite 1.0), Qwen3's template with
`enable_thinking=False` (T-lite/T-pro 2.x), Mistral Nemo Instruct 2407's template, the
GigaChat-20B-A3B-instruct template and YandexGPT-5-Lite-8B-instruct's template as llama.cpp's
tests quote them.
"""

SAIGA = (
    "{% for message in messages %}"
    "{% set role = 'bot' if message['role'] == 'assistant' else message['role'] %}"
    "{{ bos_token + role + '\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ bos_token + 'bot' }}{% endif %}"
)

# Saiga v2 as published: rulm's self_instruct/configs/saiga_mistral_7b.json trains with
# internal_prompts/saiga_v2.json, whose message templates are all "<s>{role}\n{content}</s>"
# (no newline between turns); the reply prompt is <s>, "bot", "\n" as in its
# src/interact_mistral_llamacpp.py (the json's own suffix is "<s>bot", the reply then starts
# on a new line, as every trained bot message does).
SAIGA_V2 = (
    "{% for message in messages %}"
    "{% set role = 'bot' if message['role'] == 'assistant' else message['role'] %}"
    "{{ bos_token + role + '\n' + message['content'] + eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ bos_token + 'bot\n' }}{% endif %}"
)

LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)

CHATML = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

QWEN3 = """{%- if messages[0].role == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message.role == "user" or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {%- set content = message.content %}
        {%- if '</think>' in content %}
            {%- set content = content.split('</think>')[-1].lstrip('\\n') %}
        {%- endif %}
        {{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}"""

MISTRAL_NEMO = """{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message["role"] == "user") != (loop.index0 % 2 == 0) %}
        {{- raise_exception("Conversation roles must alternate user/assistant") }}
    {%- endif %}
    {%- if message["role"] == "user" %}
        {%- if loop.last and system_message is defined %}
            {{- "[INST]" + system_message + "\\n\\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST]" + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif message["role"] == "assistant" %}
        {{- message["content"] + eos_token}}
    {%- endif %}
{%- endfor %}"""

GIGACHAT = """{% if messages[0]['role'] == 'system' -%}
    {%- set loop_messages = messages[1:] -%}
    {%- set system_message = bos_token + messages[0]['content'] + additional_special_tokens[1] -%}
{%- else -%}
    {%- set loop_messages = messages -%}
    {%- set system_message = bos_token + '' -%}
{%- endif -%}
{%- for message in loop_messages %}
    {% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {% endif %}

    {%- if loop.index0 == 0 -%}
        {{ system_message -}}
    {%- endif -%}
    {%- if message['role'] == 'user' -%}
        {{ message['role'] + additional_special_tokens[0] + message['content'] + additional_special_tokens[1] -}}
        {{ 'available functions' + additional_special_tokens[0] + additional_special_tokens[2] + additional_special_tokens[3]  + additional_special_tokens[1] -}}
    {%- endif -%}
    {%- if message['role'] == 'assistant' -%}
        {{ message['role'] + additional_special_tokens[0] + message['content'] + additional_special_tokens[1] -}}
    {%- endif -%}
    {%- if loop.last and add_generation_prompt -%}
        {{ 'assistant' + additional_special_tokens[0] -}}
    {%- endif -%}
{%- endfor %}"""  # noqa: E501

# GigaChat's template takes these from the tokenizer's additional special tokens; the last two
# render the empty function list `[]`.
GIGACHAT_EXTRA = ["<|role_sep|>", "<|message_sep|>", "[", "]"]

YANDEX = """<s>{%- set names = {'assistant': ' Ассистент:', 'user': ' Пользователь:'} %}
{%- macro __render_user_message(message) %}
{{ names.user }} {{ message.content + '\\n\\n' }}
{%- endmacro %}
{%- macro __render_assistant_message(message) %}
    {{- names.assistant }}
    {{- ' ' + message.content + '\\n\\n' }}
{%- endmacro %}
{%- if not add_generation_prompt is defined %}
{%- set add_generation_prompt = false %}
{%- endif %}
{%- for message in messages %}
    {%- if message['role'] == 'user' %}
        {{- __render_user_message(message) }}
    {%- endif %}
    {%- if message.role == 'assistant' and not loop.last %}
        {{- __render_assistant_message(message) }}
    {%- endif %}
    {%- if loop.last %}
        {{- ' Ассистент:[SEP]' }}
    {%- endif %}
{%- endfor %}
"""

# GigaChat 3 (GigaChat3-10B-A1.8B, llama.cpp's models/templates copy), reduced to a plain
# conversation: the long developer-system text is shortened, tools are left out.
GIGACHAT3 = """{%- set add_tokens = namespace(role_sep="<|role_sep|>\\n", message_sep="<|message_sep|>\\n\\n") -%}
{%- macro render_role_message(message, role=None) -%}
    {%- if not role -%}{%- set role = message["role"] -%}{%- endif -%}
    {%- set message_content = message['content'] or '' -%}
    {{- role + add_tokens.role_sep + message_content + add_tokens.message_sep -}}
{%- endmacro -%}
{{- bos_token -}}
{{- render_role_message({"role": "developer system", "content": "A dialog will follow below."}) -}}
{%- if messages and messages[0]['role'] == 'system' -%}
    {{- render_role_message(messages[0]) -}}
    {%- set messages = messages[1:] -%}
{%- endif -%}
{%- for message in messages -%}
    {{- render_role_message(message) -}}
    {%- if loop.last and add_generation_prompt and message['role'] != 'assistant' -%}
        {{- 'assistant' + add_tokens.role_sep -}}
    {%- endif -%}
{%- endfor -%}"""  # noqa: E501

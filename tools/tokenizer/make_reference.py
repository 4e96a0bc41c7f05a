#!/usr/bin/env python3
"""Writes the golden data the C++ tokenizer tests compare against.

The reference is the `tokenizers` package (raw Rust tokenizer, not transformers' AutoTokenizer,
which mangles this tokenizer) and jinja2 for the chat template from tokenizer_config.json.
Every string is generated here from a fixed seed, so the output is reproducible for the same
package versions. Output (JSON lines, plain so the C++ side needs no decompressor):

  encode_cases.jsonl  {"c": category, "t": text | "x": hex bytes, "m": "plain", "ids": [...]}
                      "x" holds invalid UTF-8; its ids are those of the text after Python's
                      bytes.decode("utf-8", "replace"), the replacement tandem documents.
                      "m": "plain" means special-token text is not parsed
                      (tokenizers' encode_special_tokens = True).
  chat_cases.jsonl    {"messages": [...], "gen": bool, "text": rendered, "ids": [...]}
  manifest.json       versions and the sha256 of the tokenizer files used.
"""
import argparse
import hashlib
import json
import os
import random
import re
import sys
import unicodedata

SEED = 20240603

WORDS = ("the of and to in is that it was for on are with as be at by this have from or one "
         "had not but what all were when we there can an your which their said if do will each "
         "about how up out them then she many some so these would other into has more her two "
         "like him see time could no make than first been its who now people my made over did "
         "down only way find use may water long little very after words called just where most "
         "know get through back much before go good new write our used me man too any day same "
         "right look think also around another came come work three word must because does part "
         "even place well such here take why things help put years different away again off "
         "tokenizer server model expert decode prefill latency throughput kernel tensor cache "
         "request stream token batch schedule memory bandwidth attention mixture routing").split()
CONTRACTIONS = ["don't", "I'll", "it's", "we're", "they've", "she'd", "can't", "I'm", "you'll",
                "O'Neil", "rock'n'roll", "'quoted'", "\"double\""]
PUNCT = [".", ",", "!", "?", ";", ":", "...", " -", " --", "—", "(", ")", "[", "]", "\"", "'"]
CJK_COMMON = "的一是不了在人有我他这个们中来上大为和国地到以说时要就出会可也你对生能而子那得于着下自之年过发后作里用道行所然家种事成方多经么去法学如都同现当没动面起看定天分还进好小部其些主样理心她本前开但因只从想实日军者意无力它与长把机十民第公此已工使情明性知全三又关点正业外将两高间由问很最重并物手应战向头文体政美相见被利什二等产或新己制身果加西斯月话合回特代内信表化老给世位次度门任常先海通教儿原东声提立及比员解水名真论处走义各入几口认条平系气题活尔更别打女变四神总何电数安少报才结反受目太量再感建务做接必场件计管期市直德资命山金指克许统区保至队形社便空决治展马科司五基眼书非则听白却界达光放强即像难且权思王象完设式色路记南品住告类求据程北边死张该交规万取拉格望觉术领共确传师观清今切院让识候带导争运笑飞风步改收根干造言联持组每济车亲极林服快办议往元英士证近失转夫令准布始怎呢存未远叫台单影具罗字爱击流备兵连调深商算质团集百需价花党华城石级整府离况亚请技际约示复病息究线似官火断精满支视消越器容照须九增研写称企八功吗包片史委乎查轻易早曾除农找装广显吧阿李标谈吃图念六引历首医局突专费号尽另周较注语仅考落青随选列武红响虽推势参希古众构房半节土投某案黑维革划敌致陈律足态护七兴派孩验责营星够章音跟志底站严巴例防族供效续施留讲型料终答紧黄绝奇察母京段依批群项故按河米围江织害斗双境客纪采举杀攻父苏密低朝友诉止细愿千值仍男钱破网热助倒育属坐帐职孙"
CN_PUNCT = "，。！？、；：“”‘’（）《》【】…—·"
KANA = "あいうえおかきくけこさしすせそたちつてとなにぬねのはひふへほまみむめもやゆよらりるれろわをんアイウエオカキクケコサシスセソタチツテトナニヌネノハヒフヘホマミムメモヤユヨラリルレロワヲンー"
SCRIPTS = {
    "cyrillic": "абвгдеёжзийклмнопрстуфхцчшщъыьэюяАБВГДЕЖЗИЙКЛМНОПРСТУФХЦЧШЩЭЮЯ",
    "greek": "αβγδεζηθικλμνξοπρστυφχψωΑΒΓΔΕΖΗΘΙΚΛΜΝΞΟΠΡΣΤΥΦΧΨΩάέήίόύώ",
    "arabic": "ابتثجحخدذرزسشصضطظعغفقكلمنهوي\u064b\u064e\u064f\u0650\u0651",
    "hebrew": "אבגדהוזחטיכלמנסעפצקרשת",
    "devanagari": "अआइईउऊएऐओऔकखगघचछजझटठडढणतथदधनपफबभमयरलवशषसह\u093e\u093f\u0940\u0941\u0942\u0947\u0948\u094b\u094c\u094d\u0902",
    "thai": "กขคงจฉชซญดตถทธนบปผพฟภมยรลวศษสหอฮ\u0e31\u0e34\u0e35\u0e36\u0e37\u0e38\u0e39\u0e48\u0e49",
    "hangul": "가나다라마바사아자차카타파하한국어대화감사합니다안녕하세요",
    "latin_ext": "àáâãäåæçèéêëìíîïñòóôõöøùúûüýÿčćđšžłńśźżőűășțğışÀÉÎÕÜŁŚ",
}
EMOJI = ["😀", "😂", "🥲", "👍", "👍🏽", "❤️", "🔥", "🎉", "🚀", "🤖", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇺🇸",
         "🇯🇵", "1️⃣", "#️⃣", "✅", "⚠️", "🙏🏿", "🧑‍💻", "🐍", "☕", "🌍", "✨", "💯", "🫠"]
SPACES = [" ", "  ", "\t", "\n", "\r\n", "\n\n", " \n", "\u3000", "\u00a0", "\u2009", "\u200b",
          "\u0085", "\u2028", "\v", "\f", "\r"]


def words(rng, n):
    out = []
    for _ in range(n):
        w = rng.choice(WORDS) if rng.random() < 0.9 else rng.choice(CONTRACTIONS)
        r = rng.random()
        if r < 0.1:
            w = w.capitalize()
        elif r < 0.13:
            w = w.upper()
        out.append(w)
        if rng.random() < 0.12:
            out[-1] += rng.choice(PUNCT)
    return " ".join(out)


def english(rng):
    s = words(rng, rng.randint(1, 40))
    if rng.random() < 0.5:
        s = s[0].upper() + s[1:] + rng.choice([".", "!", "?", "", "\n"])
    return s


def chinese(rng):
    parts = []
    for _ in range(rng.randint(1, 12)):
        r = rng.random()
        if r < 0.6:
            parts.append("".join(rng.choice(CJK_COMMON) for _ in range(rng.randint(1, 12))))
        elif r < 0.75:
            parts.append(rng.choice(CN_PUNCT))
        elif r < 0.85:
            parts.append("".join(rng.choice(KANA) for _ in range(rng.randint(1, 8))))
        elif r < 0.93:
            parts.append(" " + words(rng, rng.randint(1, 3)) + " ")
        else:
            parts.append(str(rng.randint(0, 100000)))
    return "".join(parts)


CODE_LINES = [
    "def {f}({a}, {b}=None):", "    return {a} ** 2 + {b}  # {w}", "for (int i = 0; i < {n}; ++i) {{",
    "    sum += v[i] * {n};", "}}", "std::vector<int32_t> {a}{{{n}, {n}}};", "if ({a} != nullptr && {b}->ok()) {{",
    "#include <{w}.h>", "const {a} = await fetch(`/api/{w}?id=${{{b}}}`);", "SELECT {a}, COUNT(*) FROM {w} WHERE id > {n};",
    "<div class=\"{w}\">{a} &amp; {b}</div>", "{{\"{a}\": [{n}, {n}.5, true, null], \"{b}\": \"{w}\"}}",
    "    self.{a} = {b}.get('{w}', {n})", "fn {f}(&mut self, {a}: u32) -> Result<(), Error> {{", "\t{a} := {b}[{n}:]",
    "$ ./build/{w} --{a}={n} 2>&1 | grep -v '^#'", "x = lambda {a}: {a}[::-1]", "@property", "/* {w} */",
    "{a}++; {b}--; {a}<<={n}; {b}>>=1; {a}^={b};", "print(f\"{{{a}!r}} -> {{{b}:>8.3f}}\")",
]


def ident(rng):
    w = rng.choice(WORDS)
    return rng.choice([w, w + "_" + rng.choice(WORDS), w + str(rng.randint(0, 99)),
                       w.capitalize() + rng.choice(WORDS).capitalize()])


def code(rng):
    lines = []
    indent = ""
    for _ in range(rng.randint(1, 5)):
        line = rng.choice(CODE_LINES).format(f=ident(rng), a=ident(rng), b=ident(rng),
                                             w=rng.choice(WORDS), n=rng.randint(0, 4096))
        lines.append(indent + line)
        if rng.random() < 0.3:
            indent = rng.choice(["", "    ", "        ", "\t", "\t\t", "  "])
    return rng.choice(["\n", "\r\n", "\n\n"]).join(lines)


def numbers(rng):
    forms = [
        lambda: str(rng.randint(0, 10 ** rng.randint(1, 30))),
        lambda: f"{rng.uniform(-1e6, 1e6):.{rng.randint(0, 8)}f}",
        lambda: f"{rng.randint(0, 10**9):,}",
        lambda: f"{rng.random():e}",
        lambda: f"{rng.randint(1900, 2100)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        lambda: f"+1 ({rng.randint(100, 999)}) {rng.randint(100, 999)}-{rng.randint(1000, 9999)}",
        lambda: f"v{rng.randint(0, 9)}.{rng.randint(0, 99)}.{rng.randint(0, 999)}",
        lambda: "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 60))),
        lambda: "".join(rng.choice("٠١٢٣٤٥٦٧٨٩０１２３４５６７８９²³¹½¼ⅫⅣ१२३") for _ in range(rng.randint(1, 12))),
        lambda: f"0x{rng.getrandbits(64):x}",
        lambda: f"{rng.randint(0, 100)}%",
        lambda: f"${rng.randint(0, 10**6)}.{rng.randint(0, 99):02d}",
    ]
    return rng.choice([" ", "", ", ", " + ", "\n"]).join(rng.choice(forms)() for _ in range(rng.randint(1, 6)))


def emoji(rng):
    parts = []
    for _ in range(rng.randint(1, 10)):
        r = rng.random()
        parts.append(rng.choice(EMOJI) if r < 0.6 else (words(rng, 2) if r < 0.85 else rng.choice(SPACES)))
    return "".join(parts) if rng.random() < 0.5 else " ".join(parts)


def mixed(rng):
    parts = []
    for _ in range(rng.randint(2, 12)):
        r = rng.random()
        if r < 0.5:
            alphabet = SCRIPTS[rng.choice(list(SCRIPTS))]
            parts.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 10))))
        elif r < 0.65:
            parts.append(chinese(rng)[:10])
        elif r < 0.8:
            parts.append(words(rng, rng.randint(1, 3)))
        elif r < 0.9:
            parts.append(rng.choice(EMOJI))
        else:
            parts.append(rng.choice(PUNCT + ["'s", "'ll", "!!", "?!", "«", "»", "¿", "¡"]))
        parts.append(rng.choice(["", " ", " ", "  ", "\n", "\t"]))
    return "".join(parts)


def whitespace(rng):
    parts = []
    for _ in range(rng.randint(1, 8)):
        r = rng.random()
        if r < 0.4:
            parts.append(rng.choice(SPACES) * rng.randint(1, 40))
        elif r < 0.6:
            parts.append("".join(rng.choice(SPACES) for _ in range(rng.randint(1, 30))))
        elif r < 0.8:
            parts.append(words(rng, rng.randint(1, 3)))
        else:
            parts.append(rng.choice(["a", "1", ".", "中", "😀", "é", "\u0301", "'s", "-"]))
    return "".join(parts)


def random_code_point(rng):
    r = rng.random()
    if r < 0.05:
        return 0xFFFD
    if r < 0.25:
        cp = rng.randint(0, 0x7FF)
    elif r < 0.75:
        cp = rng.randint(0x800, 0xFFFF)
    else:
        cp = rng.randint(0x10000, 0x10FFFF)
    if 0xD800 <= cp <= 0xDFFF:  # lone surrogates are not text (Python str to tokenizers fails)
        cp = 0xFFFD
    return cp


def random_unicode(rng):
    return "".join(chr(random_code_point(rng)) for _ in range(rng.randint(1, 40)))


INVALID_PIECES = [b"\x80", b"\xbf", b"\xc0\x80", b"\xc1\xbf", b"\xc2", b"\xe0\x80\x80", b"\xe0\xa0",
                  b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xf0\x80\x80\x80", b"\xf0\x9f\x98", b"\xf4\x90\x80\x80",
                  b"\xf5\x80", b"\xff", b"\xfe\xfe", b"\xf8\x88\x80\x80\x80", b"\xe2\x82", b"\xf0\x9f"]


def invalid_utf8(rng):
    r = rng.random()
    if r < 0.3:
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 40)))
    base = rng.choice([english, chinese, emoji, mixed])(rng).encode("utf-8")
    for _ in range(rng.randint(1, 4)):
        pos = rng.randint(0, len(base))
        if r < 0.6:
            base = base[:pos] + rng.choice(INVALID_PIECES) + base[pos:]
        else:  # cut a multi-byte character in the middle
            base = base[:pos] + base[pos + 1:]
    return base


SPECIAL_TEXTS = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>",
                 "<|EOT|>", "<｜tool▁calls▁begin｜>", "<｜fim▁hole｜>", "<｜place▁holder▁no▁7｜>",
                 "<｜User", "<｜", "｜>", "<|EOT", "<｜▁pad▁｜>", "<<｜User｜>>", "< |EOT|>"]


def with_specials(rng):
    parts = []
    for _ in range(rng.randint(1, 8)):
        parts.append(rng.choice(SPECIAL_TEXTS) if rng.random() < 0.5 else
                     rng.choice([english, chinese, code, whitespace])(rng)[:40])
    return "".join(parts)


def codepoint_sweep():
    """Every assigned code point of the BMP (large uniform blocks strided) and a stride of the
    other planes, each after a space, doubled and before a letter, so the regex classes (\\s,
    \\p{L}, \\p{N}, \\p{P}, \\p{S}, \\p{M}) are checked character by character."""
    uniform = [(0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xA000, 0xA48C), (0xAC00, 0xD7A3), (0xE000, 0xF8FF)]
    cps = []
    for cp in list(range(0, 0x10000)) + list(range(0x10000, 0x110000, 97)):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        if any(lo <= cp <= hi for lo, hi in uniform) and cp % 50 != 0:
            continue
        if unicodedata.category(chr(cp)) == "Cn" and cp % 61 != 0:
            continue  # unassigned code points all behave alike
        cps.append(cp)
    # Code points assigned after Unicode 14 (tokenizer/unicode_patch.h), every third one.
    patch = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../../tokenizer/unicode_patch.h")
    with open(patch, encoding="utf-8") as f:
        for line in f:
            for lo, hi in re.findall(r"x\{([0-9A-F]+)\}(?:-\\\\x\{([0-9A-F]+)\})?", line):
                if "kSpace" not in line:
                    cps += list(range(int(lo, 16), int(hi or lo, 16) + 1, 3))
    step = 64
    return ["".join(f" {chr(c)}{chr(c)}a" for c in cps[i:i + step]) for i in range(0, len(cps), step)]


def long_strings(rng):
    return [
        "a" * 3000, "ab" * 1500, " " * 2000 + "x", "\n" * 1000, "中" * 1500,
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(4000)),
        "".join(rng.choice(SCRIPTS["cyrillic"]) for _ in range(2000)),
        "1234567890" * 200, "😀" * 500, "é\u0301" * 800, "-" * 3000, "=+" * 1000,
        " ".join(words(rng, 400).split()),
    ]


CATEGORIES = [("english", english, 1700), ("chinese", chinese, 1200), ("code", code, 1200),
              ("numbers", numbers, 800), ("emoji", emoji, 700), ("mixed", mixed, 1200),
              ("whitespace", whitespace, 800), ("random_unicode", random_unicode, 1200),
              ("invalid_utf8", invalid_utf8, 500), ("special", with_specials, 400)]


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--tokenizer", default=os.path.join(here, "../../../shared/data/deepseek-v3"))
    ap.add_argument("--out", default=os.path.join(here, "../../tests/data/tokenizer"))
    args = ap.parse_args()

    import jinja2
    import jinja2.sandbox
    import tokenizers

    tok = tokenizers.Tokenizer.from_file(os.path.join(args.tokenizer, "tokenizer.json"))
    with open(os.path.join(args.tokenizer, "tokenizer_config.json"), encoding="utf-8") as f:
        config = json.load(f)
    rng = random.Random(SEED)
    os.makedirs(args.out, exist_ok=True)

    def encode(text, plain=False):
        tok.encode_special_tokens = plain
        return tok.encode(text, add_special_tokens=False).ids

    count = 0
    with open(os.path.join(args.out, "encode_cases.jsonl"), "w", encoding="utf-8") as f:
        def emit(category, text=None, raw=None, plain=False):
            nonlocal count
            rec = {"c": category}
            if raw is not None:
                rec["x"] = raw.hex()
                text = raw.decode("utf-8", "replace")
            else:
                rec["t"] = text
            if plain:
                rec["m"] = "plain"
            rec["ids"] = encode(text, plain)
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            count += 1

        for text in ["", " ", "\n", "a", "Hello world", "Hello, world!", "  leading", "trailing  "]:
            emit("fixed", text)
        for name, gen, n in CATEGORIES:
            for _ in range(n):
                value = gen(rng)
                if isinstance(value, bytes):
                    emit(name, raw=value)
                else:
                    emit(name, value, plain=name == "special" and rng.random() < 0.5)
        for text in codepoint_sweep():
            emit("sweep", text)
        for text in long_strings(rng):
            emit("long", text)
    print(f"encode_cases.jsonl: {count} strings", file=sys.stderr)

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    template = env.from_string(config["chat_template"])

    def token_text(value):
        return value["content"] if isinstance(value, dict) else value

    convs = conversations(rng)
    with open(os.path.join(args.out, "chat_cases.jsonl"), "w", encoding="utf-8") as f:
        for messages in convs:
            for gen in (True, False):
                text = template.render(messages=messages, add_generation_prompt=gen,
                                       bos_token=token_text(config["bos_token"]),
                                       eos_token=token_text(config["eos_token"]))
                rec = {"messages": messages, "gen": gen, "text": text, "ids": encode(text)}
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    print(f"chat_cases.jsonl: {2 * len(convs)} renderings", file=sys.stderr)

    manifest = {
        "seed": SEED, "tokenizers": tokenizers.__version__, "jinja2": jinja2.__version__,
        "tokenizer.json sha256": sha256(os.path.join(args.tokenizer, "tokenizer.json")),
        "tokenizer_config.json sha256": sha256(os.path.join(args.tokenizer, "tokenizer_config.json")),
        "encode_cases": count, "chat_cases": 2 * len(convs),
    }
    with open(os.path.join(args.out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")


def conversations(rng):
    def tool_call(name, args):
        return {"type": "function", "function": {"name": name, "arguments": json.dumps(args)}}

    convs = [
        [{"role": "user", "content": "Hello!"}],
        [{"role": "system", "content": "You are a helpful assistant."},
         {"role": "user", "content": "What is 2+2?"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello! How can I help?"},
         {"role": "user", "content": "Tell me a joke.\n\nA short one."}],
        [{"role": "system", "content": "First system."}, {"role": "system", "content": "Second system."},
         {"role": "user", "content": "你好，世界"}],
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
         {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}],
        [{"role": "user", "content": ""}],
        [],
        [{"role": "system", "content": "only a system prompt"}],
        [{"role": "user", "content": "Special text <｜User｜> and <|EOT|> inside content"}],
        [{"role": "user", "content": "  spaces  \n\n tabs\t\t"}, {"role": "assistant", "content": " "}],
        [{"role": "user", "content": "code:\n```python\nprint('hi')\n```"},
         {"role": "assistant", "content": "Sure 😀"}, {"role": "system", "content": "late system"}],
        # Tool use, rendered exactly as the template does (including its quirks).
        [{"role": "user", "content": "Weather in Paris?"},
         {"role": "assistant", "content": None, "tool_calls": [tool_call("get_weather", {"city": "Paris"})]},
         {"role": "tool", "content": "{\"temp\": 21}"},
         {"role": "assistant", "content": "It is 21 degrees."}],
        [{"role": "system", "content": "Use tools."}, {"role": "user", "content": "Two cities"},
         {"role": "assistant", "content": None, "tool_calls": [tool_call("get_weather", {"city": "Paris"}),
                                                               tool_call("get_weather", {"city": "Rome"})]},
         {"role": "tool", "content": "21"}, {"role": "tool", "content": "25"}],
        [{"role": "user", "content": "x"},
         {"role": "assistant", "content": None, "tool_calls": [tool_call("f", {})]},
         {"role": "tool", "content": "out"}, {"role": "user", "content": "again"},
         {"role": "assistant", "content": None, "tool_calls": [tool_call("g", {"a": [1, 2]})]},
         {"role": "tool", "content": "out2"}],
    ]
    roles = ["user", "assistant"]
    for _ in range(40):
        conv = []
        if rng.random() < 0.5:
            conv.append({"role": "system", "content": english(rng)})
        for turn in range(rng.randint(1, 6)):
            gen = rng.choice([english, chinese, code, emoji, mixed])
            conv.append({"role": roles[turn % 2], "content": gen(rng)})
        convs.append(conv)
    return convs


if __name__ == "__main__":
    main()

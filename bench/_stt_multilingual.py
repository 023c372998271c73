"""The Spanish and Portuguese half of ``bench/stt_accuracy.py --lang es,pt``: utterances, voices
and the text normalisation their word error rate needs.

The utterances are the English set's kind (a caller to a customer-service line: opening hours,
prices, invoices, passwords, a phone number digit by digit, cancelling, delivery), written by
hand in each language; espeak-ng speaks them in two accents per language (Spain and Latin
America; Portugal and Brazil), male and female variants.

:func:`normalize_ml` compares words without case, punctuation (``¿``, ``¡``) or diacritics
(``está`` = ``esta``: an accent a recogniser drops changes nothing for the agent that reads
the text), and reads the digit words zero to nine as digits, one digit a word, so that a phone
number spoken digit by digit agrees with the ``555 0192`` a recogniser writes.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["ML_UTTERANCES", "ML_VOICES", "normalize_ml"]

ML_UTTERANCES: dict[str, tuple[str, ...]] = {
    "es": (
        "Hola, ¿cuál es el horario de atención el sábado?",
        "¿Cuánto cuesta la suscripción mensual?",
        "Quiero pagar mi última factura.",
        "No he recibido la factura de marzo.",
        "Olvidé mi contraseña y no puedo entrar.",
        "Mi número de teléfono es cinco cinco cinco, cero uno nueve dos.",
        "Quiero cancelar mi suscripción.",
        "¿Hacen envíos a México y a Colombia?",
        "¿A qué hora cierran hoy?",
        "¿Puedo hablar con un responsable, por favor?",
        "Mi paquete todavía no ha llegado.",
        "Necesito ayuda para configurar mi nuevo router.",
        "Me cobraron dos veces el mismo pedido.",
        "¿Me pueden enviar el recibo por correo electrónico?",
        "Muchas gracias, eso es todo por hoy.",
    ),
    "pt": (
        "Olá, qual é o horário de atendimento no sábado?",
        "Quanto custa a assinatura mensal?",
        "Quero pagar a minha última fatura.",
        "Não recebi a fatura de março.",
        "Esqueci a minha senha e não consigo entrar.",
        "O meu número de telefone é cinco cinco cinco, zero um nove dois.",
        "Quero cancelar a minha assinatura.",
        "Vocês fazem entregas para o Brasil e para Angola?",
        "A que horas fecham hoje?",
        "Posso falar com um responsável, por favor?",
        "A minha encomenda ainda não chegou.",
        "Preciso de ajuda para configurar o meu novo roteador.",
        "Cobraram duas vezes o mesmo pedido.",
        "Podem enviar o recibo por email?",
        "Muito obrigado, é tudo por hoje.",
    ),
}
"""Fifteen utterances per language (ISO 639-1 code)."""

ML_VOICES: dict[str, tuple[str, ...]] = {
    "es": ("es", "es-419", "es+f3", "es-419+f2"),
    "pt": ("pt", "pt-br", "pt+f3", "pt-br+f2"),
}
"""espeak-ng voices per language: the accents of two countries, male and female variants."""

_DIGIT_WORDS = {
    "cero": "0", "uno": "1", "dos": "2", "tres": "3", "cuatro": "4", "cinco": "5",
    "seis": "6", "siete": "7", "ocho": "8", "nueve": "9",
    "zero": "0", "um": "1", "dois": "2", "duas": "2", "quatro": "4", "sete": "7",
    "oito": "8", "nove": "9",
}  # fmt: skip
"""Spanish and Portuguese digit words (after diacritics are removed: ``três`` is ``tres``)."""

_NON_WORD = re.compile(r"[^\w]+")


def normalize_ml(text: str) -> list[str]:
    """The words of a Spanish or Portuguese ``text`` in a comparable form."""
    text = unicodedata.normalize("NFKD", text.lower())
    text = "".join(c for c in text if not unicodedata.combining(c))
    out: list[str] = []
    for word in _NON_WORD.sub(" ", text.replace("_", " ")).split():
        word = _DIGIT_WORDS.get(word, word)
        out.extend(word) if word.isdigit() else out.append(word)
    return out

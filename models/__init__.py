"""CLMT: the learned translator (torch; no Kafka), its training and its serving engine.

The model: `Tokenizer` (per-modality conv encoder/decoder around a shared `ResidualVQ`), `ContextTranslator`
(source tokens + patient context + classic prior -> target latent frames) and `Refiner` (sample-level correction of
super-resolution). `ModelBatch` is what the model takes, built by the serving engine (`ClmtTranslator`, the
`operators.translator.Translator` behind the `clmt` spec) and by the training sampler (`Sampler`) alike; `Clmt`
is the one forward path both run; serving's ends with `PriorBlend` (PPG->ECG shrunk toward the classic synthesis,
fitted on training records). Weights are safetensors files (`load_weights`, `save_weights`).
"""
from models.batch import Clmt, ModelBatch, TokenizedBatch, TrainingBatch, WindowInput
from models.blend import PriorBlend
from models.data import Sampler, TrainingRecord, challenge_split, load_record, load_records, split
from models.engine import ClmtTranslator, resolve_device
from models.refiner import Refiner, RefinerConfig
from models.rvq import Quantized, ResidualVQ
from models.tokenizer import Tokenizer, TokenizerConfig
from models.train import Stage, StageRun, train_refiner, train_tokenizer, train_translator
from models.translator import ContextTranslator, TranslatorConfig
from models.weights import load as load_weights
from models.weights import save as save_weights
from operators.vocab import TASK_ECG_SR, TASK_PPG2ECG, TASK_PPG_SR

__all__ = [
    "Clmt", "ClmtTranslator", "ContextTranslator", "ModelBatch", "PriorBlend", "Quantized", "Refiner", "RefinerConfig",
    "ResidualVQ", "Sampler", "Stage", "StageRun", "TASK_ECG_SR", "TASK_PPG2ECG", "TASK_PPG_SR", "TokenizedBatch",
    "Tokenizer", "TokenizerConfig", "TrainingBatch", "TrainingRecord", "TranslatorConfig", "WindowInput",
    "challenge_split", "load_record", "load_records", "load_weights", "resolve_device", "save_weights", "split",
    "train_refiner", "train_tokenizer", "train_translator",
]

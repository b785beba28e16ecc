"""Install: see install.sh (torch pinned first, fairseq fork with --no-deps, then this package)."""
from setuptools import find_packages, setup

setup(
    name="fairseq-informative-dialogue",
    version="0.1.0",
    description=(
        "fairseq plugin for informative and diverse dialogue generation: knowledge "
        "internalization, negative distillation and knowledge-infused decoding"
    ),
    python_requires=">=3.11",
    packages=find_packages(include=["informative_dialogue*", "fairseq_plugins*", "data_prep*", "dialogue_metrics*", "analysis*"]),
    # fairseq (ve-fairseq) and torch are installed by install.sh, not here: listing them would
    # pull a CUDA torch and a broken torchaudio. See ../shared/ENVIRONMENT.md.
    install_requires=["tqdm", "numpy", "sacrebleu", "rouge-score", "nltk"],
    entry_points={
        "console_scripts": [
            "prepare-dailydialog=data_prep.corpora.dailydialog:cli",
            "prepare-cmu-dog=data_prep.corpora.cmu_dog:cli",
            "prepare-wow=data_prep.corpora.wow:cli",
            "prepare-rocstories=data_prep.corpora.rocstories:cli",
            "tokenize-dialog=data_prep.corpora.tokenize:cli",
            "detokenize-dialog=data_prep.corpora.detokenize:cli",
            "source-entropy=data_prep.nd.source_entropy:cli",
            "kid-retrieve=data_prep.kid.retrieve:cli",
            "kid-build-trie=data_prep.kid.build_trie:cli",
            "kid-merge-shards=data_prep.kid.merge:cli",
            "kid-convert-dpr=data_prep.kid.dpr_passages:cli",
            "dialog-metrics=dialogue_metrics.cli:cli",
            "build-knowledge-base=data_prep.ki.knowledge_base:cli",
            "ki-transform-alignments=data_prep.ki.alignment_ablations:cli",
            "ki-train-retriever=data_prep.ki.train_retriever:cli",
            "ki-binarize-alignments=data_prep.ki.binarize:cli",
            "ki-encode-knowledge=data_prep.ki.encode_knowledge:cli",
            "ki-mine=data_prep.ki.mine:cli",
            "ki-merge-alignments=data_prep.ki.merge:cli",
            "ki-embedding-pca=analysis.embedding_pca:cli",
            "paired-bootstrap=analysis.paired_bootstrap:cli",
        ]
    },
)

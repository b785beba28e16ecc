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
    packages=find_packages(include=["fairseq_plugins*", "data_prep*", "dialogue_metrics*", "analysis*"]),
    # fairseq (ve-fairseq) and torch are installed by install.sh, not here: listing them would
    # pull a CUDA torch and a broken torchaudio. See ../shared/ENVIRONMENT.md.
    install_requires=["tqdm", "numpy", "sacrebleu", "rouge-score", "nltk"],
    entry_points={
        "console_scripts": [
            "prepare-dailydialog=data_prep.dailydialog:main",
            "prepare-cmu-dog=data_prep.cmu_dog:main",
            "prepare-wow=data_prep.wow:main",
            "prepare-rocstories=data_prep.rocstories:cli",
            "tokenize-dialog=data_prep.tokenize:main",
            "detokenize-dialog=data_prep.detokenize:main",
            "source-entropy=data_prep.source_entropy:cli",
            "kid-retrieve=data_prep.kid_retrieve:main",
            "kid-build-trie=data_prep.kid_build_trie:main",
            "kid-convert-dpr=data_prep.kid_dpr_passages:cli",
            "dialog-metrics=dialogue_metrics.cli:main",
            "build-knowledge-base=data_prep.knowledge_base:cli",
            "ki-transform-alignments=data_prep.ki_alignment_ablations:cli",
            "ki-train-retriever=data_prep.ki_train_retriever:main",
            "ki-binarize-alignments=data_prep.ki_binarize:cli",
            "ki-encode-knowledge=data_prep.ki_index:cli",
            "ki-mine=data_prep.ki_mine:cli",
            "ki-merge-alignments=data_prep.ki_merge:cli",
            "ki-embedding-pca=analysis.embedding_pca:cli",
            "paired-bootstrap=analysis.paired_bootstrap:cli",
        ]
    },
)

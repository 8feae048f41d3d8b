"""masktas_jax: self-supervised architecture search for vision transformers."""

from setuptools import find_packages, setup

# The jax release whose libtpu and CUDA plugin the '.[tpu]' and '.[cuda]'
# extras pin (jax[tpu]==0.10.2 brings libtpu 0.0.42.1).
JAX = '0.10.2'

setup(
    name='masktas_jax',
    version='0.1.0',
    description=('MaskTAS in JAX/Flax: masked-distillation supernet training '
                 'and label-free evolutionary search for ViTs'),
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    python_requires='>=3.10',
    packages=find_packages(include=['masktas_jax', 'masktas_jax.*']),
    install_requires=[
        'jax>=0.7',
        'flax>=0.12',
        'optax>=0.2.5',
        'orbax-checkpoint>=0.11',
        'grain>=0.2.10',
        'tensorflow-datasets>=4.9.9',
        'ml-collections>=1.0',
        'einops>=0.8',
        'chex>=0.1.90',
        'absl-py>=2.1',
        'etils[epath]>=1.7',
        'numpy>=1.26',
        'pillow>=10',
        'scikit-learn>=1.4',
        'matplotlib>=3.8',
        # TensorBoard event files without TensorFlow (tensorboard.py).
        'tensorboardX>=2.6',
    ],
    extras_require={
        # torch 2.13.0's CPU build is the PyTorch reference of the MAE
        # parity tests; other versions may pull a multi-GB CUDA build.
        # libtpu (through jax[tpu]; Linux wheels only) for the tests of
        # mode=compile, which compile for TPU topologies on the CPU host.
        'test': ['pytest>=8', 'pytest-xdist>=3.5', 'torch==2.13.0',
                 f'jax[tpu]=={JAX}; platform_system == "Linux"'],
        # mode=compile's back ends: libtpu for TPU topologies, the CUDA
        # plugin for GPUs. Each is built for one jax release, so jax is
        # pinned to it.
        'tpu': [f'jax[tpu]=={JAX}'],
        'cuda': [f'jax[cuda12]=={JAX}'],
        # Reading the official MAE .pth checkpoints (CPU build is enough).
        'torch': ['torch>=2.5'],
    },
)

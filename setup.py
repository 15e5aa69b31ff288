"""Install byzshield: `pip install .` or `pip install -e .`.

Extras: test, bench, report (matplotlib, for the report's plots), tensorboard.
"""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def _requirements() -> list[str]:
    lines = (HERE / "requirements.txt").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


setup(
    name="byzshield",
    version="0.1.0",
    description="Byzantine-robust distributed training with redundant gradient placement",
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=[*find_packages(include=["byzshield", "byzshield.*", "launch"]), "byzshield.conf"],
    package_dir={"byzshield": "byzshield", "byzshield.conf": "conf", "launch": "launch"},
    package_data={
        "byzshield": ["compute/assets/*"],
        "byzshield.conf": ["*.yaml", "*/*.yaml", "*/*/*.yaml"],
    },
    include_package_data=True,
    install_requires=_requirements(),
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "pytest-xdist>=3.5",  # tests/run.sh runs the suite on two workers
            "hypothesis>=6",
            "ruff>=0.6",
            "moto[server]>=5",
            "byzfl",  # reference implementations the aggregator tests compare against
            "mnist1d",  # regenerates the shipped MNIST-1D arrays in a freshness test
            # The SSH tests' `fab setup` builds this checkout with --no-build-isolation from
            # the test environment: setuptools >= 70.1 builds editable wheels without the
            # `wheel` package, which a fresh venv lacks (ensurepip's setuptools 65 does not).
            "setuptools>=70.1",
            # the optional paths, so that CI runs them: report plots and TensorBoard events
            "matplotlib>=3.7",
            "tensorboard",
        ],
        "bench": ["byzfl"],
        "report": ["matplotlib>=3.7"],  # in the requirements too; kept for old commands
        "tensorboard": ["tensorboard"],
    },
    entry_points={
        "console_scripts": [
            "byzshield-train=byzshield.train:cli",
            "byzshield-report=byzshield.report:cli",
            "byzshield-placement=byzshield.placement:main",
        ]
    },
)

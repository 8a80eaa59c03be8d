using OrtFinetune.Training.Compiler.Autodiff;

namespace OrtFinetune.Training.Compiler.Gradients;

/// <summary>
/// Ops whose outputs never carry a gradient: shape arithmetic, comparisons, indices, randomness.
/// (Integer outputs such as TopK's indices are cut from the gradient path by their dtype anyway.)
/// </summary>
public static class NonDifferentiableOps
{
    public static void Register(GradientRegistry r) => r.NotDifferentiable(
        "Shape", "Size", "Constant", "ConstantOfShape", "Range", "NonZero", "OneHot", "EyeLike",
        "Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Not", "And", "Or", "Xor",
        "ArgMax", "ArgMin", "IsNaN", "IsInf", "Sign", "Floor", "Ceil", "Round",
        "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
        "Bernoulli", "BitShift", "NonMaxSuppression");
}

using OrtFinetune.Training.Compiler.Autodiff;

namespace OrtFinetune.Training.Compiler.Gradients;

/// <summary>Ops whose outputs never carry a gradient: shape arithmetic, comparisons, indices, randomness.</summary>
public static class NonDifferentiableOps
{
    public static void Register(GradientRegistry r) => r.NotDifferentiable(
        "Shape", "Size", "Constant", "ConstantOfShape", "Range", "NonZero", "OneHot", "EyeLike",
        "Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Not", "And", "Or", "Xor",
        "ArgMax", "ArgMin", "IsNaN", "IsInf", "Sign", "Floor", "Ceil", "Round",
        "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
        "Bernoulli", "TopK_Indices", "Mod", "BitShift", "NonMaxSuppression");
}

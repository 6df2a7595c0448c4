//! Tests of the XTS engine: IEEE 1619-2007 Annex B vectors, cross-checks against the independent
//! `xts-mode` crate and OpenSSL's libcrypto, the plain64 scaling for large sectors, refusals, and
//! that dropping the engine clears its round keys.

use super::*;
use rand::{Rng, RngCore, SeedableRng};

fn h(s: &str) -> Vec<u8> {
    hex::decode(s).expect("test vector hex")
}

/// 00 01 .. ff twice: the plaintext of IEEE vectors 4 and 10-14.
fn ramp512() -> Vec<u8> {
    (0..512).map(|i| i as u8).collect()
}

const K128_4_9: &str = "2718281828459045235360287471352631415926535897932384626433832795";
const K256_10_14: &str = "27182818284590452353602874713526624977572470936999595749669676273141592653589793238462643383279502884197169399375105820974944592";

// IEEE 1619-2007 Annex B, XTS-AES-128 vectors 4-9 (512-byte data units). Vectors 5, 6, 8 and 9
// take the previous vector's ciphertext as plaintext, as in the standard.
const CT4: &str = "27a7479befa1d476489f308cd4cfa6e2a96e4bbe3208ff25287dd3819616e89cc78cf7f5e543445f8333d8fa7f56000005279fa5d8b5e4ad40e736ddb4d35412328063fd2aab53e5ea1e0a9f332500a5df9487d07a5c92cc512c8866c7e860ce93fdf166a24912b422976146ae20ce846bb7dc9ba94a767aaef20c0d61ad02655ea92dc4c4e41a8952c651d33174be51a10c421110e6d81588ede82103a252d8a750e8768defffed9122810aaeb99f9172af82b604dc4b8e51bcb08235a6f4341332e4ca60482a4ba1a03b3e65008fc5da76b70bf1690db4eae29c5f1badd03c5ccf2a55d705ddcd86d449511ceb7ec30bf12b1fa35b913f9f747a8afd1b130e94bff94effd01a91735ca1726acd0b197c4e5b03393697e126826fb6bbde8ecc1e08298516e2c9ed03ff3c1b7860f6de76d4cecd94c8119855ef5297ca67e9f3e7ff72b1e99785ca0a7e7720c5b36dc6d72cac9574c8cbbc2f801e23e56fd344b07f22154beba0f08ce8891e643ed995c94d9a69c9f1b5f499027a78572aeebd74d20cc39881c213ee770b1010e4bea718846977ae119f7a023ab58cca0ad752afe656bb3c17256a9f6e9bf19fdd5a38fc82bbe872c5539edb609ef4f79c203ebb140f2e583cb2ad15b4aa5b655016a8449277dbd477ef2c8d6c017db738b18deb4a427d1923ce3ff262735779a418f20a282df920147beabe421ee5319d0568";
const CT5: &str = "264d3ca8512194fec312c8c9891f279fefdd608d0c027b60483a3fa811d65ee59d52d9e40ec5672d81532b38b6b089ce951f0f9c35590b8b978d175213f329bb1c2fd30f2f7f30492a61a532a79f51d36f5e31a7c9a12c286082ff7d2394d18f783e1a8e72c722caaaa52d8f065657d2631fd25bfd8e5baad6e527d763517501c68c5edc3cdd55435c532d7125c8614deed9adaa3acade5888b87bef641c4c994c8091b5bcd387f3963fb5bc37aa922fbfe3df4e5b915e6eb514717bdd2a74079a5073f5c4bfd46adf7d282e7a393a52579d11a028da4d9cd9c77124f9648ee383b1ac763930e7162a8d37f350b2f74b8472cf09902063c6b32e8c2d9290cefbd7346d1c779a0df50edcde4531da07b099c638e83a755944df2aef1aa31752fd323dcb710fb4bfbb9d22b925bc3577e1b8949e729a90bbafeacf7f7879e7b1147e28ba0bae940db795a61b15ecf4df8db07b824bb062802cc98a9545bb2aaeed77cb3fc6db15dcd7d80d7d5bc406c4970a3478ada8899b329198eb61c193fb6275aa8ca340344a75a862aebe92eee1ce032fd950b47d7704a3876923b4ad62844bf4a09c4dbe8b4397184b7471360c9564880aedddb9baa4af2e75394b08cd32ff479c57a07d3eab5d54de5f9738b8d27f27a9f0ab11799d7b7ffefb2704c95c6ad12c39f1e867a4b7b1d7818a4b753dfd2a89ccb45e001a03a867b187f225dd";
const CT6: &str = "fa762a3680b76007928ed4a4f49a9456031b704782e65e16cecb54ed7d017b5e18abd67b338e81078f21edb7868d901ebe9c731a7c18b5e6dec1d6a72e078ac9a4262f860beefa14f4e821018272e411a951502b6e79066e84252c3346f3aa62344351a291d4bedc7a07618bdea2af63145cc7a4b8d4070691ae890cd65733e7946e9021a1dffc4c59f159425ee6d50ca9b135fa6162cea18a939838dc000fb386fad086acce5ac07cb2ece7fd580b00cfa5e98589631dc25e8e2a3daf2ffdec26531659912c9d8f7a15e5865ea8fb5816d6207052bd7128cd743c12c8118791a4736811935eb982a532349e31dd401e0b660a568cb1a4711f552f55ded59f1f15bf7196b3ca12a91e488ef59d64f3a02bf45239499ac6176ae321c4a211ec545365971c5d3f4f09d4eb139bfdf2073d33180b21002b65cc9865e76cb24cd92c874c24c18350399a936ab3637079295d76c417776b94efce3a0ef7206b15110519655c956cbd8b2489405ee2b09a6b6eebe0c53790a12a8998378b33a5b71159625f4ba49d2a2fdba59fbf0897bc7aabd8d707dc140a80f0f309f835d3da54ab584e501dfa0ee977fec543f74186a802b9a37adb3e8291eca04d66520d229e60401e7282bef486ae059aa70696e0e305d777140a7a883ecdcb69b9ff938e8a4231864c69ca2c2043bed007ff3e605e014bcf518138dc3a25c5e236171a2d01d6";
const PT7: &str = "8e41b78c390b5af9d758bb214a67e9f6bf7727b09ac6124084c37611398fa45daad94868600ed391fb1acd4857a95b466e62ef9f4b377244d1c152e7b30d731aad30c716d214b707aed99eb5b5e580b3e887cf7497465651d4b60e6042051da3693c3b78c14489543be8b6ad0ba629565bba202313ba7b0d0c94a3252b676f46cc02ce0f8a7d34c0ed229129673c1f61aed579d08a9203a25aac3a77e9db60267996db38df637356d9dcd1632e369939f2a29d89345c66e05066f1a3677aef18dea4113faeb629e46721a66d0a7e785d3e29af2594eb67dfa982affe0aac058f6e15864269b135418261fc3afb089472cf68c45dd7f231c6249ba0255e1e033833fc4d00a3fe02132d7bc3873614b8aee34273581ea0325c81f0270affa13641d052d36f0757d484014354d02d6883ca15c24d8c3956b1bd027bcf41f151fd8023c5340e5606f37e90fdb87c86fb4fa634b3718a30bace06a66eaf8f63c4aa3b637826a87fe8cfa44282e92cb1615af3a28e53bc74c7cba1a0977be9065d0c1a5dec6c54ae38d37f37aa35283e048e5530a85c4e7a29d7b92ec0c3169cdf2a805c7604bce60049b9fb7b8eaac10f51ae23794ceba68bb58112e293b9b692ca721b37c662f8574ed4dba6f88e170881c82cddc1034a0ca7e284bf0962b6b26292d836fa9f73c1ac770eef0f2d3a1eaf61d3e03555fd424eedd67e18a18094f888";
const CT7: &str = "d55f684f81f4426e9fde92a5ff02df2ac896af63962888a97910c1379e20b0a3b1db613fb7fe2e07004329ea5c22bfd33e3dbe4cf58cc608c2c26c19a2e2fe22f98732c2b5cb844cc6c0702d91e1d50fc4382a7eba5635cd602432a2306ac4ce82f8d70c8d9bc15f918fe71e74c622d5cf71178bf6e0b9cc9f2b41dd8dbe441c41cd0c73a6dc47a348f6702f9d0e9b1b1431e948e299b9ec2272ab2c5f0c7be86affa5dec87a0bee81d3d50007edaa2bcfccb35605155ff36ed8edd4a40dcd4b243acd11b2b987bdbfaf91a7cac27e9c5aea525ee53de7b2d3332c8644402b823e94a7db26276d2d23aa07180f76b4fd29b9c0823099c9d62c519880aee7e9697617c1497d47bf3e571950311421b6b734d38b0db91eb85331b91ea9f61530f54512a5a52a4bad589eb69781d537f23297bb459bdad2948a29e1550bf4787e0be95bb173cf5fab17dab7a13a052a63453d97ccec1a321954886b7a1299faaeecae35c6eaaca753b041b5e5f093bf83397fd21dd6b3012066fcc058cc32c3b09d7562dee29509b5839392c9ff05f51f3166aaac4ac5f238038a3045e6f72e48ef0fe8bc675e82c318a268e43970271bf119b81bf6a982746554f84e72b9f00280a320a08142923c23c883423ff949827f29bbacdc1ccdb04938ce6098c95ba6b32528f4ef78eed778b2e122ddfd1cbdd11d1c0a6783e011fc536d63d053260637";
const CT8: &str = "72efc1ebfe1ee25975a6eb3aa8589dda2b261f1c85bdab442a9e5b2dd1d7c3957a16fc08e526d4b1223f1b1232a11af274c3d70dac57f83e0983c498f1a6f1aecb021c3e70085a1e527f1ce41ee5911a82020161529cd82773762daf5459de94a0a82adae7e1703c808543c29ed6fb32d9e004327c1355180c995a07741493a09c21ba01a387882da4f62534b87bb15d60d197201c0fd3bf30c1500a3ecfecdd66d8721f90bcc4c17ee925c61b0a03727a9c0d5f5ca462fbfa0af1c2513a9d9d4b5345bd27a5f6e653f751693e6b6a2b8ead57d511e00e58c45b7b8d005af79288f5c7c22fd4f1bf7a898b03a5634c6a1ae3f9fae5de4f296a2896b23e7ed43ed14fa5a2803f4d28f0d3ffcf24757677aebdb47bb388378708948a8d4126ed1839e0da29a537a8c198b3c66ab00712dd261674bf45a73d67f76914f830ca014b65596f27e4cf62de66125a5566df9975155628b400fbfb3a29040ed50faffdbb18aece7c5c44693260aab386c0a37b11b114f1c415aebb653be468179428d43a4d8bc3ec38813eca30a13cf1bb18d524f1992d44d8b1a42ea30b22e6c95b199d8d182f8840b09d059585c31ad691fa0619ff038aca2c39a943421157361717c49d322028a74648113bd8c9d7ec77cf3c89c1ec8718ceff8516d96b34c3c614f10699c9abc4ed0411506223bea16af35c883accdbe1104eef0cfdb54e12fb230a";
const CT9: &str = "3260ae8dad1f4a32c5cafe3ab0eb95549d461a67ceb9e5aa2d3afb62dece0553193ba50c75be251e08d1d08f1088576c7efdfaaf3f459559571e12511753b07af073f35da06af0ce0bbf6b8f5ccc5cea500ec1b211bd51f63b606bf6528796ca12173ba39b8935ee44ccce646f90a45bf9ccc567f0ace13dc2d53ebeedc81f58b2e41179dddf0d5a5c42f5d8506c1a5d2f8f59f3ea873cbcd0eec19acbf325423bd3dcb8c2b1bf1d1eaed0eba7f0698e4314fbeb2f1566d1b9253008cbccf45a2b0d9c5c9c21474f4076e02be26050b99dee4fd68a4cf890e496e4fcae7b70f94ea5a9062da0daeba1993d2ccd1dd3c244b8428801495a58b216547e7e847c46d1d756377b6242d2e5fb83bf752b54e0df71e889f3a2bb0f4c10805bf3c590376e3c24e22ff57f7fa965577375325cea5d920db94b9c336b455f6e894c01866fe9fbb8c8d3f70a2957285f6dfb5dcd8cbf54782f8fe7766d4723819913ac773421e3a31095866bad22c86a6036b2518b2059b4229d18c8c2ccbdf906c6cc6e82464ee57bddb0bebcb1dc645325bfb3e665ef7251082c88ebb1cf203bd779fdd38675713c8daadd17e1cabee432b09787b6ddf3304e38b731b45df5df51b78fcfb3d32466028d0ba36555e7e11ab0ee0666061d1645d962444bc47a38188930a84b4d561395c73c087021927ca638b7afc8a8679ccb84c26555440ec7f10445cd";

// XTS-AES-256 vectors 10-14: plaintext 00..ff twice, sequence numbers 0xff .. 0xffffffffff.
const CT10: &str = "1c3b3a102f770386e4836c99e370cf9bea00803f5e482357a4ae12d414a3e63b5d31e276f8fe4a8d66b317f9ac683f44680a86ac35adfc3345befecb4bb188fd5776926c49a3095eb108fd1098baec70aaa66999a72a82f27d848b21d4a741b0c5cd4d5fff9dac89aeba122961d03a757123e9870f8acf1000020887891429ca2a3e7a7d7df7b10355165c8b9a6d0a7de8b062c4500dc4cd120c0f7418dae3d0b5781c34803fa75421c790dfe1de1834f280d7667b327f6c8cd7557e12ac3a0f93ec05c52e0493ef31a12d3d9260f79a289d6a379bc70c50841473d1a8cc81ec583e9645e07b8d9670655ba5bbcfecc6dc3966380ad8fecb17b6ba02469a020a84e18e8f84252070c13e9f1f289be54fbc481457778f616015e1327a02b140f1505eb309326d68378f8374595c849d84f4c333ec4423885143cb47bd71c5edae9be69a2ffeceb1bec9de244fbe15992b11b77c040f12bd8f6a975a44a0f90c29a9abc3d4d893927284c58754cce294529f8614dcd2aba991925fedc4ae74ffac6e333b93eb4aff0479da9a410e4450e0dd7ae4c6e2910900575da401fc07059f645e8b7e9bfdef33943054ff84011493c27b3429eaedb4ed5376441a77ed43851ad77f16f541dfd269d50d6a5f14fb0aab1cbb4c1550be97f7ab4066193c4caa773dad38014bd2092fa755c824bb5e54c4f36ffda9fcea70b9c6e693e148c151";
const CT11: &str = "77a31251618a15e6b92d1d66dffe7b50b50bad552305ba0217a610688eff7e11e1d0225438e093242d6db274fde801d4cae06f2092c728b2478559df58e837c2469ee4a4fa794e4bbc7f39bc026e3cb72c33b0888f25b4acf56a2a9804f1ce6d3d6e1dc6ca181d4b546179d55544aa7760c40d06741539c7e3cd9d2f6650b2013fd0eeb8c2b8e3d8d240ccae2d4c98320a7442e1c8d75a42d6e6cfa4c2eca1798d158c7aecdf82490f24bb9b38e108bcda12c3faf9a21141c3613b58367f922aaa26cd22f23d708dae699ad7cb40a8ad0b6e2784973dcb605684c08b8d6998c69aac049921871ebb65301a4619ca80ecb485a31d744223ce8ddc2394828d6a80470c092f5ba413c3378fa6054255c6f9df4495862bbb3287681f931b687c888abf844dfc8fc28331e579928cd12bd2390ae123cf03818d14dedde5c0c24c8ab018bfca75ca096f2d531f3d1619e785f1ada437cab92e980558b3dce1474afb75bfedbf8ff54cb2618e0244c9ac0d3c66fb51598cd2db11f9be39791abe447c63094f7c453b7ff87cb5bb36b7c79efb0872d17058b83b15ab0866ad8a58656c5a7e20dbdf308b2461d97c0ec0024a2715055249cf3b478ddd4740de654f75ca686e0d7345c69ed50cdc2a8b332b1f8824108ac937eb050585608ee734097fc09054fbff89eeaeea791f4a7ab1f9868294a4f9e27b42af8100cb9d59cef9645803";
const CT12: &str = "e387aaa58ba483afa7e8eb469778317ecf4cf573aa9d4eac23f2cdf914e4e200a8b490e42ee646802dc6ee2b471b278195d60918ececb44bf79966f83faba0499298ebc699c0c8634715a320bb4f075d622e74c8c932004f25b41e361025b5a87815391f6108fc4afa6a05d9303c6ba68a128a55705d415985832fdeaae6c8e19110e84d1b1f199a2692119edc96132658f09da7c623efcec712537a3d94c0bf5d7e352ec94ae5797fdb377dc1551150721adf15bd26a8efc2fcaad56881fa9e62462c28f30ae1ceaca93c345cf243b73f542e2074a705bd2643bb9f7cc79bb6e7091ea6e232df0f9ad0d6cf502327876d82207abf2115cdacf6d5a48f6c1879a65b115f0f8b3cb3c59d15dd8c769bc014795a1837f3901b5845eb491adfefe097b1fa30a12fc1f65ba22905031539971a10f2f36c321bb51331cdefb39e3964c7ef079994f5b69b2edd83a71ef549971ee93f44eac3938fcdd61d01fa71799da3a8091c4c48aa9ed263ff0749df95d44fef6a0bb578ec69456aa5408ae32c7af08ad7ba8921287e3bbee31b767be06a0e705c864a769137df28292283ea81a2480241b44d9921cdbec1bc28dc1fda114bd8e5217ac9d8ebafa720e9da4f9ace231cc949e5b96fe76ffc21063fddc83a6b8679c00d35e09576a875305bed5f36ed242c8900dd1fa965bc950dfce09b132263a1eef52dd6888c309f5a7d712826";
const CT13: &str = "bf53d2dade78e822a4d949a9bc6766b01b06a8ef70d26748c6a7fc36d80ae4c5520f7c4ab0ac8544424fa405162fef5a6b7f229498063618d39f0003cb5fb8d1c86b643497da1ff945c8d3bedeca4f479702a7a735f043ddb1d6aaade3c4a0ac7ca7f3fa5279bef56f82cd7a2f38672e824814e10700300a055e1630b8f1cb0e919f5e942010a416e2bf48cb46993d3cb6a51c19bacf864785a00bc2ecff15d350875b246ed53e68be6f55bd7e05cfc2b2ed6432198a6444b6d8c247fab941f569768b5c429366f1d3f00f0345b96123d56204c01c63b22ce78baf116e525ed90fdea39fa469494d3866c31e05f295ff21fea8d4e6e13d67e47ce722e9698a1c1048d68ebcde76b86fcf976eab8aa9790268b7068e017a8b9b749409514f1053027fd16c3786ea1bac5f15cb79711ee2abe82f5cf8b13ae73030ef5b9e4457e75d1304f988d62dd6fc4b94ed38ba831da4b7634971b6cd8ec325d9c61c00f1df73627ed3745a5e8489f3a95c69639c32cd6e1d537a85f75cc844726e8a72fc0077ad22000f1d5078f6b866318c668f1ad03d5a5fced5219f2eabbd0aa5c0f460d183f04404a0d6f469558e81fab24a167905ab4c7878502ad3e38fdbe62a41556cec37325759533ce8f25f367c87bb5578d667ae93f9e2fd99bcbc5f2fbba88cf6516139420fcff3b7361d86322c4bd84c82f335abb152c4a93411373aaa8220";
const CT14: &str = "64497e5a831e4a932c09be3e5393376daa599548b816031d224bbf50a818ed2350eae7e96087c8a0db51ad290bd00c1ac1620857635bf246c176ab463be30b808da548081ac847b158e1264be25bb0910bbc92647108089415d45fab1b3d2604e8a8eff1ae4020cfa39936b66827b23f371b92200be90251e6d73c5f86de5fd4a950781933d79a28272b782a2ec313efdfcc0628f43d744c2dc2ff3dcb66999b50c7ca895b0c64791eeaa5f29499fb1c026f84ce5b5c72ba1083cddb5ce45434631665c333b60b11593fb253c5179a2c8db813782a004856a1653011e93fb6d876c18366dd8683f53412c0c180f9c848592d593f8609ca736317d356e13e2bff3a9f59cd9aeb19cd482593d8c46128bb32423b37a9adfb482b99453fbe25a41bf6feb4aa0bef5ed24bf73c762978025482c13115e4015aac992e5613a3b5c2f685b84795cb6e9b2656d8c88157e52c42f978d8634c43d06fea928f2822e465aa6576e9bf419384506cc3ce3c54ac1a6f67dc66f3b30191e698380bc999b05abce19dc0c6dcc2dd001ec535ba18deb2df1a101023108318c75dc98611a09dc48a0acdec676fabdf222f07e026f059b672b56e5cbc8e1d21bbd867dd927212054681d70ea737134cdfce93b6f82ae22423274e58a0821cc5502e2d0ab4585e94de6975be5e0b4efce51cd3e70c25a1fbbbd609d273ad5b0d59631c531f6a0a57b9";

/// (vector number, key, data unit sequence number, plaintext, ciphertext)
type Vector = (u32, Vec<u8>, u128, Vec<u8>, Vec<u8>);

fn ieee_vectors() -> Vec<Vector> {
    let zero32 = vec![0u8; 32];
    let four = vec![0x44u8; 32];
    vec![
        (
            1,
            h(&"00".repeat(32)),
            0,
            zero32,
            h("917cf69ebd68b2ec9b9fe9a3eadda692cd43d2f59598ed858c02c2652fbf922e"),
        ),
        (
            2,
            h(&("11".repeat(16) + &"22".repeat(16))),
            0x33_3333_3333,
            four.clone(),
            h("c454185e6a16936e39334038acef838bfb186fff7480adc4289382ecd6d394f0"),
        ),
        (
            3,
            h(&("fffefdfcfbfaf9f8f7f6f5f4f3f2f1f0".to_string() + &"22".repeat(16))),
            0x33_3333_3333,
            four,
            h("af85336b597afc1a900b2eb21ec949d292df4c047e0b21532186a5971a227a89"),
        ),
        (4, h(K128_4_9), 0, ramp512(), h(CT4)),
        (5, h(K128_4_9), 1, h(CT4), h(CT5)),
        (6, h(K128_4_9), 2, h(CT5), h(CT6)),
        (7, h(K128_4_9), 0xfd, h(PT7), h(CT7)),
        (8, h(K128_4_9), 0xfe, h(CT7), h(CT8)),
        (9, h(K128_4_9), 0xff, h(CT8), h(CT9)),
        (10, h(K256_10_14), 0xff, ramp512(), h(CT10)),
        (11, h(K256_10_14), 0xffff, ramp512(), h(CT11)),
        (12, h(K256_10_14), 0xff_ffff, ramp512(), h(CT12)),
        (13, h(K256_10_14), 0xffff_ffff, ramp512(), h(CT13)),
        (14, h(K256_10_14), 0xff_ffff_ffff, ramp512(), h(CT14)),
    ]
}

#[test]
fn ieee1619_vectors_1_to_14() {
    let vectors = ieee_vectors();
    assert_eq!(vectors.len(), 14);
    for (n, key, dsn, ptx, ctx) in vectors {
        assert_eq!(ptx.len(), ctx.len(), "vector {n} lengths");
        // Vector 1 has equal (all-zero) halves, which the public constructor refuses.
        let engine = XtsEngine::new_unchecked(&key).unwrap();
        assert_eq!(
            engine.key_bits() as usize,
            key.len() * 4,
            "vector {n} key size"
        );
        let mut buf = ptx.clone();
        engine.encrypt_unit(&mut buf, dsn).unwrap();
        assert_eq!(hex::encode(&buf), hex::encode(&ctx), "vector {n} encrypt");
        engine.decrypt_unit(&mut buf, dsn).unwrap();
        assert_eq!(buf, ptx, "vector {n} decrypt");
    }
}

/// The 512-byte vectors are also 512-byte sectors: sector n of a 512-byte-sector volume has
/// tweak n, so encrypt_sectors must reproduce them, also several sectors in one call.
#[test]
fn ieee_vectors_through_the_sector_interface() {
    let e = XtsEngine::new(&h(K128_4_9)).unwrap();
    // Vectors 4, 5, 6 are sectors 0, 1, 2 (each with its own plaintext).
    let mut buf = [ramp512(), h(CT4), h(CT5)].concat();
    e.encrypt_sectors(&mut buf, 0, 512).unwrap();
    assert_eq!(buf, [h(CT4), h(CT5), h(CT6)].concat());
    e.decrypt_sectors(&mut buf, 0, 512).unwrap();
    assert_eq!(buf, [ramp512(), h(CT4), h(CT5)].concat());
    // Vectors 7, 8, 9 are sectors 0xfd, 0xfe, 0xff.
    let mut buf = [h(PT7), h(CT7), h(CT8)].concat();
    e.encrypt_sectors_parallel(&mut buf, 0xfd, 512).unwrap();
    assert_eq!(buf, [h(CT7), h(CT8), h(CT9)].concat());
    // Vector 11 as sector 0xffff, AES-256.
    let e = XtsEngine::new(&h(K256_10_14)).unwrap();
    let mut buf = ramp512();
    e.encrypt_sectors(&mut buf, 0xffff, 512).unwrap();
    assert_eq!(buf, h(CT11));
}

/// plain64 with 4096-byte sectors counts 512-byte units: sector n uses tweak n * 8, and each
/// sector is one 4096-byte data unit (one tweak chain of 256 blocks).
#[test]
fn large_sectors_use_plain64_scaled_tweaks() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut key = [0u8; 64];
    rng.fill_bytes(&mut key);
    let e = XtsEngine::new(&key).unwrap();
    for sector_size in SECTOR_SIZES {
        let scale = (sector_size / 512) as u128;
        let mut data = vec![0u8; sector_size * 5];
        rng.fill_bytes(&mut data);
        let mut by_sector = data.clone();
        e.encrypt_sectors(&mut by_sector, 1000, sector_size)
            .unwrap();
        for (i, chunk) in data.chunks_exact(sector_size).enumerate() {
            let mut unit = chunk.to_vec();
            e.encrypt_unit(&mut unit, (1000 + i as u128) * scale)
                .unwrap();
            assert_eq!(
                unit,
                by_sector[i * sector_size..(i + 1) * sector_size],
                "sector size {sector_size}, sector {i}"
            );
        }
        // And not the unscaled tweak (unless the scale is 1).
        if scale > 1 {
            let mut unit = data[..sector_size].to_vec();
            e.encrypt_unit(&mut unit, 1000).unwrap();
            assert_ne!(unit, by_sector[..sector_size]);
        }
    }
}

type Reference = Box<dyn Fn(&mut [u8], u128, bool)>;

fn xts_mode_reference(key: &[u8]) -> Reference {
    use aes::cipher::KeyInit as _;
    let half = key.len() / 2;
    match key.len() {
        32 => {
            let x = xts_mode::Xts128::new(
                aes::Aes128::new_from_slice(&key[..half]).unwrap(),
                aes::Aes128::new_from_slice(&key[half..]).unwrap(),
            );
            Box::new(move |buf, t, enc| {
                let tw = xts_mode::get_tweak_default(t);
                if enc {
                    x.encrypt_sector(buf, tw)
                } else {
                    x.decrypt_sector(buf, tw)
                }
            })
        }
        _ => {
            let x = xts_mode::Xts128::new(
                aes::Aes256::new_from_slice(&key[..half]).unwrap(),
                aes::Aes256::new_from_slice(&key[half..]).unwrap(),
            );
            Box::new(move |buf, t, enc| {
                let tw = xts_mode::get_tweak_default(t);
                if enc {
                    x.encrypt_sector(buf, tw)
                } else {
                    x.decrypt_sector(buf, tw)
                }
            })
        }
    }
}

/// Independent implementation, random keys, data, sector sizes and sector numbers (including
/// ones near the top of the 64-bit plain64 range).
#[test]
fn matches_xts_mode_crate_on_random_data() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x1619);
    for round in 0..60 {
        let key_len = if round % 3 == 0 { 32 } else { 64 };
        let mut key = vec![0u8; key_len];
        rng.fill_bytes(&mut key);
        let e = XtsEngine::new(&key).unwrap();
        let reference = xts_mode_reference(&key);
        let sector_size = SECTOR_SIZES[rng.gen_range(0..4)];
        let scale = (sector_size / 512) as u64;
        let count = rng.gen_range(1..6);
        let first: u64 = match round % 4 {
            0 => rng.gen_range(0..1 << 20),
            1 => u64::MAX / scale - count as u64 + 1,
            _ => rng.gen::<u64>() / scale / 2,
        };
        let mut data = vec![0u8; sector_size * count];
        rng.fill_bytes(&mut data);
        let mut ours = data.clone();
        e.encrypt_sectors(&mut ours, first, sector_size).unwrap();
        let mut theirs = data.clone();
        for (i, s) in theirs.chunks_exact_mut(sector_size).enumerate() {
            reference(s, u128::from((first + i as u64) * scale), true);
        }
        assert_eq!(ours, theirs, "round {round}: encrypt");
        e.decrypt_sectors(&mut ours, first, sector_size).unwrap();
        assert_eq!(ours, data, "round {round}: decrypt");
    }
}

#[test]
fn parallel_path_matches_serial_path() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut key = [0u8; 64];
    rng.fill_bytes(&mut key);
    let e = XtsEngine::new(&key).unwrap();
    // Not a multiple of the parallel chunk, so the last task is short.
    let mut data = vec![0u8; 3 * 1024 * 1024 + 3 * 4096];
    rng.fill_bytes(&mut data);
    let mut serial = data.clone();
    let mut parallel = data.clone();
    e.encrypt_sectors(&mut serial, 77, 4096).unwrap();
    e.encrypt_sectors_parallel(&mut parallel, 77, 4096).unwrap();
    assert!(serial == parallel, "parallel encryption differs");
    e.decrypt_sectors_parallel(&mut parallel, 77, 4096).unwrap();
    assert!(parallel == data, "parallel round trip differs");
}

#[test]
fn round_trip_all_sizes() {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for key_len in [32, 64] {
        let mut key = vec![0u8; key_len];
        rng.fill_bytes(&mut key);
        let e = XtsEngine::new(&key).unwrap();
        for sector_size in SECTOR_SIZES {
            let mut data = vec![0u8; sector_size * 3];
            rng.fill_bytes(&mut data);
            let mut buf = data.clone();
            e.encrypt_sectors(&mut buf, 5, sector_size).unwrap();
            assert_ne!(buf, data);
            e.decrypt_sectors(&mut buf, 5, sector_size).unwrap();
            assert_eq!(buf, data);
        }
    }
}

/// OpenSSL's XTS, reached through Python's `cryptography` package: OpenSSL 3.0's `openssl enc`
/// refuses XTS ciphers ("enc XTS ciphers not supported"), so the CLI cannot be used, but
/// `cryptography` calls libcrypto's EVP XTS directly. Each sector is one EVP call with the
/// plain64 tweak as IV, exactly as dm-crypt drives the kernel's xts(aes). Input on stdin:
/// `direction key-hex` then one `tweak-hex data-hex` line per sector; output: one hex line each.
const OPENSSL_XTS_PY: &str = r#"
import sys
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
lines = sys.stdin.read().split("\n")
direction, key = lines[0].split()
key = bytes.fromhex(key)
for line in lines[1:]:
    if not line:
        continue
    tweak, data = (bytes.fromhex(x) for x in line.split())
    c = Cipher(algorithms.AES(key), modes.XTS(tweak))
    op = c.encryptor() if direction == "e" else c.decryptor()
    print((op.update(data) + op.finalize()).hex())
"#;

fn openssl_python_available() -> bool {
    std::process::Command::new("python3")
        .args(["-c", "import cryptography.hazmat.primitives.ciphers"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn openssl_xts(key: &[u8], sectors: &[(u128, &[u8])], encrypt: bool) -> Vec<Vec<u8>> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut input = format!("{} {}\n", if encrypt { "e" } else { "d" }, hex::encode(key));
    for (tweak, data) in sectors {
        input += &format!(
            "{} {}\n",
            hex::encode(tweak.to_le_bytes()),
            hex::encode(data)
        );
    }
    let mut child = Command::new("python3")
        .args(["-c", OPENSSL_XTS_PY])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python3/openssl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(h)
        .collect()
}

#[test]
fn matches_openssl_libcrypto() {
    if !openssl_python_available() {
        eprintln!(
            "SKIP matches_openssl_libcrypto: python3 with the cryptography package is missing"
        );
        return;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    for (key_len, sector_size, first) in [
        (64, 512, 0u64),
        (64, 4096, 12345),
        (64, 4096, (1 << 60) + 3),
        (64, 2048, 1 << 40),
        (32, 1024, 99),
    ] {
        let mut key = vec![0u8; key_len];
        rng.fill_bytes(&mut key);
        let e = XtsEngine::new(&key).unwrap();
        let mut data = vec![0u8; sector_size * 4];
        rng.fill_bytes(&mut data);
        let mut ours = data.clone();
        e.encrypt_sectors(&mut ours, first, sector_size).unwrap();
        let scale = sector_size as u64 / 512;
        let sectors: Vec<(u128, &[u8])> = data
            .chunks_exact(sector_size)
            .enumerate()
            .map(|(i, s)| (u128::from((first + i as u64) * scale), s))
            .collect();
        let theirs = openssl_xts(&key, &sectors, true).concat();
        assert!(
            theirs == ours,
            "key {key_len} B, sector size {sector_size}, first sector {first}: differs from OpenSSL"
        );
        let ct: Vec<(u128, &[u8])> = ours
            .chunks_exact(sector_size)
            .enumerate()
            .map(|(i, s)| (sectors[i].0, s))
            .collect();
        assert!(openssl_xts(&key, &ct, false).concat() == data);
    }
}

#[test]
fn refusals() {
    assert_eq!(
        XtsEngine::new(&[1u8; 48]).unwrap_err(),
        XtsError::KeyLength(48)
    );
    assert_eq!(XtsEngine::new(&[]).unwrap_err(), XtsError::KeyLength(0));
    assert_eq!(
        XtsEngine::new(&[7u8; 64]).unwrap_err(),
        XtsError::EqualHalves
    );
    assert_eq!(
        XtsEngine::new(&[7u8; 32]).unwrap_err(),
        XtsError::EqualHalves
    );
    let mut key = [7u8; 64];
    key[63] = 8;
    let e = XtsEngine::new(&key).unwrap();
    let mut buf = vec![0u8; 4096 + 512];
    let before = buf.clone();
    assert_eq!(
        e.encrypt_sectors(&mut buf, 0, 4096).unwrap_err(),
        XtsError::NotWholeSectors {
            len: 4608,
            sector_size: 4096
        }
    );
    assert_eq!(
        e.decrypt_sectors(&mut buf, 0, 520).unwrap_err(),
        XtsError::SectorSize(520)
    );
    assert_eq!(
        e.encrypt_sectors(&mut buf, 0, 8192).unwrap_err(),
        XtsError::SectorSize(8192)
    );
    assert_eq!(
        e.encrypt_sectors(&mut buf[..4096], u64::MAX / 8 + 1, 4096)
            .unwrap_err(),
        XtsError::SectorOverflow
    );
    assert_eq!(
        e.encrypt_sectors(&mut buf[..1024], u64::MAX, 512)
            .unwrap_err(),
        XtsError::SectorOverflow
    );
    assert_eq!(
        e.encrypt_unit(&mut buf[..17], 0).unwrap_err(),
        XtsError::UnitLength(17)
    );
    assert_eq!(
        e.encrypt_unit(&mut buf[..0], 0).unwrap_err(),
        XtsError::UnitLength(0)
    );
    assert_eq!(buf, before, "refused calls must not touch the buffer");
    // The last representable sector is fine, and an empty buffer is a no-op.
    e.encrypt_sectors(&mut buf[..512], u64::MAX, 512).unwrap();
    e.encrypt_sectors(&mut [], 0, 4096).unwrap();
    assert!(
        !format!("{e:?}").contains("07"),
        "Debug must not print key material"
    );
}

/// Drops an engine in place and inspects the memory it occupied: the aes crate's `zeroize`
/// feature must have overwritten every round key. With AES-NI, round key 0 of each encryption
/// schedule is the raw key half, so before the drop the key halves are visible in the engine's
/// bytes; afterwards nothing but the enum tag may be non-zero.
#[test]
// Reading the engine's bytes after its drop takes raw pointers: the one unsafe test.
#[allow(unsafe_code)]
fn drop_clears_round_keys() {
    use std::mem::{size_of, MaybeUninit};
    let mut key = [0u8; 64];
    rand::rngs::StdRng::seed_from_u64(99).fill_bytes(&mut key);
    let mut slot = MaybeUninit::<XtsEngine>::zeroed();
    slot.write(XtsEngine::new(&key).unwrap());
    let bytes = |slot: &MaybeUninit<XtsEngine>| -> Vec<u8> {
        // Volatile reads so the check cannot be optimised into assumptions about dead memory.
        let p = slot.as_ptr() as *const u8;
        (0..size_of::<XtsEngine>())
            .map(|i| unsafe { std::ptr::read_volatile(p.add(i)) })
            .collect()
    };
    let before = bytes(&slot);
    let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    if std::arch::is_x86_feature_detected!("aes") {
        assert!(
            contains(&before, &key[..16]),
            "sanity: AES-NI schedule holds the data key"
        );
        assert!(
            contains(&before, &key[32..48]),
            "sanity: AES-NI schedule holds the tweak key"
        );
    }
    unsafe { slot.assume_init_drop() };
    let after = bytes(&slot);
    let nonzero = after.iter().filter(|b| **b != 0).count();
    assert!(
        nonzero <= 8,
        "{nonzero} of {} bytes still non-zero after drop",
        after.len()
    );
    assert!(!contains(&after, &key[..16]) && !contains(&after, &key[32..48]));
}
